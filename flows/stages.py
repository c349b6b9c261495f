"""The five stages as cached Prefect tasks: each a plain function of tasks/, through `stage()`."""

from __future__ import annotations

from tasks import download, evaluate, preprocess, report, train
from tasks.engine.caching import stage

download_dataset = stage(download.download_dataset, describe_inputs=download.mirror_checksums)
preprocess_dataset = stage(preprocess.preprocess_dataset)
train_model = stage(train.train_model, describe_inputs=train.replicas)
evaluate_model = stage(evaluate.evaluate_model)
build_report = stage(report.build_report, files=[report.TEMPLATES / "report.md.j2"])
