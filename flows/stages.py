"""The five stages as cached Prefect tasks: each a plain function of tasks/, through `stage()`.

Each key holds the versions of the libraries that stage computes with, and no other's.
"""

from __future__ import annotations

from engine.caching import stage
from tasks import download, evaluate, preprocess, report, train

download_dataset = stage(download.download_dataset, describe_inputs=download.mirror_checksums,
                         libraries=["numpy", "tensorflow", "tensorflow-cpu", "tensorflow-datasets"])
preprocess_dataset = stage(preprocess.preprocess_dataset, libraries=["numpy"])
train_model = stage(train.train_model, describe_inputs=train.replicas,
                    libraries=["numpy", "tensorflow", "tensorflow-cpu", "keras", "h5py"])
evaluate_model = stage(evaluate.evaluate_model, libraries=["numpy", "tensorflow", "tensorflow-cpu", "keras", "h5py",
                                                           "pandas"])
build_report = stage(report.build_report, files=[report.TEMPLATES / "report.md.j2"],
                     libraries=["numpy", "pandas", "matplotlib", "pillow", "tabulate", "jinja2", "markdown", "nh3"])
