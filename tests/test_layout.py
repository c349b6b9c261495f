"""The code's shape: the stages run without the orchestrator, and the layers hold.

The layers themselves are import-linter's contracts in pyproject.toml, which `make test` checks.
"""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _loaded(probe: str) -> list[str]:
    done = subprocess.run([sys.executable, "-c", f"import sys; {probe}; "
                           "print('prefect' in sys.modules, 'tensorflow' in sys.modules)"],
                          cwd=ROOT, capture_output=True, text=True, check=True)
    return done.stdout.split()


def test_a_stage_runs_without_prefect(tmp_path, mirror):
    from tasks.download import download_dataset
    from tasks.refs import DatasetRef

    out = tmp_path / "download" / "00000000f00df00d"
    out.mkdir(parents=True)
    fields = download_dataset(out, "mnist", str(mirror), downloads=tmp_path / "tfds",
                              log=__import__("logging").getLogger("test"))
    raw = DatasetRef(fingerprint="00000000f00df00d", **fields).at(tmp_path)
    assert raw.arrays()["train_images"].shape == (fields["train_count"], 28, 28)


def test_importing_every_stage_loads_neither_prefect_nor_tensorflow():
    assert _loaded("import tasks.download, tasks.preprocess, tasks.train, tasks.evaluate, tasks.report") == \
        ["False", "False"]


def test_the_layers_contract_holds():
    done = subprocess.run([str(Path(sys.executable).parent / "lint-imports")], cwd=ROOT, capture_output=True,
                          text=True)
    assert done.returncode == 0 and "0 broken" in done.stdout, done.stdout[-2000:]
