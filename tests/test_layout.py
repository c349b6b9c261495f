"""The code's shape: imports run one way, flows > stages > machinery, and stages stay plain."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
STAGES = ["download", "preprocess", "train", "evaluate", "report"]


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def test_the_machinery_imports_no_stage_and_no_flow():
    for path in (ROOT / "tasks" / "engine").glob("*.py"):
        outside = {name for name in _imports(path) if name.startswith("flows")
                   or (name.startswith("tasks.") and not name.startswith("engine"))}
        assert not outside, f"{path.name} imports {outside}"


@pytest.mark.parametrize("stage", STAGES)
def test_a_stage_imports_neither_prefect_nor_another_stage_nor_the_flows(stage):
    imported = _imports(ROOT / "tasks" / f"{stage}.py")
    assert not {name for name in imported if name == "prefect" or name.startswith(("prefect.", "flows"))}
    others = {f"tasks.{other}" for other in STAGES if other != stage}
    assert not imported & others, imported & others


def test_a_stage_runs_without_prefect(tmp_path, mirror):
    from tasks.download import download_dataset
    from tasks.refs import DatasetRef

    out = tmp_path / "download" / "00000000f00df00d"
    out.mkdir(parents=True)
    fields = download_dataset(out, "mnist", str(mirror), downloads=tmp_path / "tfds",
                              log=__import__("logging").getLogger("test"))
    raw = DatasetRef(stage="download", fingerprint="00000000f00df00d", **fields).at(tmp_path)
    assert raw.arrays()["train_images"].shape == (fields["train_count"], 28, 28)


def test_importing_every_stage_loads_neither_prefect_nor_tensorflow():
    import subprocess
    import sys

    probe = ("import sys; import tasks.download, tasks.preprocess, tasks.train, tasks.evaluate, tasks.report; "
             "print('prefect' in sys.modules, 'tensorflow' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["False", "False"]
