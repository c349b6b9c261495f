import importlib
import sys
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parent.parent

import pytest

from engine import caching
from engine.caching import StageCache, project_modules, source_digest
from flows.config import train_params
from tasks.refs import PreparedRef
from engine.store import ArtifactStore

# What the stages see of Prefect's context in a task run: its name.
_in_a_task_run = SimpleNamespace(task_run=SimpleNamespace(name="train_model-0a1"))

DATA = PreparedRef(stage="preprocess", fingerprint="00000000f00df00d", train_count=1, validation_count=0, test_count=1, test_sha256="0" * 64)


@pytest.fixture
def helper_package(tmp_path, monkeypatch):
    """A throwaway package: stage.py uses helper.py, which uses leaf.py."""
    package = tmp_path / "pkgx"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "leaf.py").write_text("SCALE = 255\n")
    (package / "helper.py").write_text("from pkgx.leaf import SCALE\n\ndef scale(x):\n    return x / SCALE\n")
    (package / "stage.py").write_text("from pkgx import helper\n")
    (package / "unused.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield package
    for name in [m for m in sys.modules if m.startswith("pkgx")]:
        del sys.modules[name]
    source_digest.cache_clear()


def test_modules_are_followed_through_imports(helper_package):
    assert project_modules("pkgx.stage") == ["pkgx.helper", "pkgx.leaf", "pkgx.stage"]


def test_editing_a_helper_changes_the_digest(helper_package):
    before = source_digest("pkgx.stage")
    (helper_package / "leaf.py").write_text("SCALE = 256\n")
    source_digest.cache_clear()
    importlib.invalidate_caches()
    assert source_digest("pkgx.stage") != before


def test_train_depends_on_the_modules_it_runs_and_no_more():
    modules = project_modules("tasks.train")
    assert set(modules) == {"tasks.train", "tasks.checkpoint", "tasks.pixels", "tasks.runtime", "tasks.refs"}


def test_fingerprint_follows_parameters_and_upstream_not_location():
    cache = StageCache(stage="train", module="tasks.train")
    base = cache.fingerprint({"artifacts_dir": "a", "data": DATA, "params": train_params()})
    assert base == cache.fingerprint({"artifacts_dir": "elsewhere", "data": DATA, "params": train_params()})
    assert base != cache.fingerprint({"artifacts_dir": "a", "data": DATA, "params": train_params(epochs=4)})
    other = DATA.model_copy(update={"fingerprint": "00000000beefbeef"})
    assert base != cache.fingerprint({"artifacts_dir": "a", "data": other, "params": train_params()})


def test_library_versions_enter_the_fingerprint(monkeypatch):
    cache = StageCache(stage="train", module="tasks.train")
    inputs = {"data": DATA, "params": train_params()}
    before = cache.fingerprint(inputs)
    monkeypatch.setattr(caching, "library_versions", lambda names: {"tensorflow": "9.9.9"})
    assert cache.fingerprint(inputs) != before


def test_produce_serves_an_intact_entry_without_building(tmp_path):
    cache = StageCache(stage="preprocess", module="tasks.preprocess")
    first = cache.produce(_write, str(tmp_path), {"raw": "r"})

    def must_not_build(out, raw):
        raise AssertionError("built again")

    assert cache.produce(must_not_build, str(tmp_path), {"raw": "r"}) == first


def test_produce_rebuilds_a_broken_entry(tmp_path):
    cache = StageCache(stage="preprocess", module="tasks.preprocess")
    ref = cache.produce(_write, str(tmp_path), {"raw": "r"})
    weights = tmp_path / "preprocess" / ref.fingerprint / "weights.bin"
    weights.write_bytes(b"garbage")
    assert cache.produce(_write, str(tmp_path), {"raw": "r"}) == ref
    assert weights.read_bytes() == b"w" * 100
def _write(out, raw):
    (out / "weights.bin").write_bytes(b"w" * 100)
    return {"train_count": 1, "validation_count": 0, "test_count": 1, "test_sha256": "0" * 64}


def test_cache_key_names_the_entry(tmp_path):
    cache = StageCache(stage="train", module="tasks.train")
    inputs = {"artifacts_dir": str(tmp_path), "data": DATA, "params": train_params()}
    key = cache.compute_key(None, inputs, {})
    assert key == f"train/{cache.fingerprint(inputs)}/result.json"


def test_downstream_key_follows_what_the_upstream_entry_holds_and_not_its_fingerprint(tmp_path):
    upstream = StageCache(stage="preprocess", module="tasks.preprocess")
    downstream = StageCache(stage="train", module="tasks.train")
    store = str(tmp_path)

    def build_with(content: bytes):
        def build(out, raw):
            (out / "train_x.npy").write_bytes(content)
            return {"train_count": 1, "validation_count": 0, "test_count": 1, "test_sha256": "0" * 64}
        return build

    first = upstream.produce(build_with(b"A"), store, {"raw": "r"})
    before = downstream.fingerprint({"artifacts_dir": store, "data": first, "params": train_params()})
    # The same upstream inputs computed again, but coming out different this time.
    ArtifactStore(store).evict(first.stage, first.fingerprint)
    again = upstream.produce(build_with(b"B"), store, {"raw": "r"})
    assert again.fingerprint == first.fingerprint
    after = downstream.fingerprint({"artifacts_dir": store, "data": again, "params": train_params()})
    assert after != before
    # Another upstream entry (its source edited, say) that holds what the first held: the same key.
    other = StageCache(stage="preprocess", module="tasks.preprocess", libraries=("numpy",))
    same = other.produce(build_with(b"A"), store, {"raw": "r"})
    assert same.fingerprint != first.fingerprint
    assert downstream.fingerprint({"artifacts_dir": store, "data": same, "params": train_params()}) == before


@pytest.fixture
def immutable():
    """chattr +i on a folder, undone after the test; skipped where the file system or user can't."""
    import shutil
    import subprocess

    marked = []

    def mark(path):
        if shutil.which("chattr") is None or subprocess.run(["chattr", "+i", str(path)],
                                                            capture_output=True).returncode != 0:
            pytest.skip("chattr +i is not available here")
        marked.append(path)

    yield mark
    for path in marked:
        subprocess.run(["chattr", "-i", str(path)], check=True)


def test_a_broken_entry_that_cannot_be_removed_is_never_served(tmp_path, immutable):
    from engine.caching import EntryRecords, record_key
    from engine.store import StoreError

    cache = StageCache(stage="preprocess", module="tasks.preprocess")
    ref = cache.produce(_write, str(tmp_path), {"raw": "r"})
    folder = tmp_path / "preprocess" / ref.fingerprint
    with open(folder / "weights.bin", "r+b") as f:
        f.write(b"W")
    immutable(folder)
    with pytest.raises(ValueError, match="is not served: .*weights.bin does not match its checksum"):
        EntryRecords(basepath=str(tmp_path)).read_path(record_key(ref.stage, ref.fingerprint))
    with pytest.raises(StoreError, match=f"the preprocess entry {folder} cannot be removed "
                                         r"\(Operation not permitted\); remove it by hand"):
        cache.produce(_write, str(tmp_path), {"raw": "r"})


_KEYS = """
from flows import stages
from tasks.params import TrainParams
from tasks.refs import DatasetRef, MetricsRef, ModelRef, PreparedRef

ref = dict(fingerprint="00000000f00df00d")
raw = DatasetRef(dataset="mnist", source="tfds", train_count=1, test_count=1, files_sha256={}, arrays_sha256="0",
                 test_sha256="0", **ref)
data = PreparedRef(train_count=1, validation_count=0, test_count=1, test_sha256="0" * 64, **ref)
model = ModelRef(epochs_run=1, epoch_seconds=[1.0], device="CPU", batch_size=8, train_count=1, validation_count=1,
                 validated_on="validation", validation_accuracy=0.5, validation_loss=1.0, **ref)
metrics = MetricsRef(test_accuracy=0.5, test_loss=1.0, test_count=1, test_sha256="0" * 64, **ref)
params = TrainParams(epochs=1, batch_size=8, learning_rate=0.001, lr_schedule="constant", seed=0)
inputs = {"download_dataset": {"dataset": "mnist", "mirror": None}, "preprocess_dataset": {"raw": raw},
          "train_model": {"data": data, "params": params}, "evaluate_model": {"model": model, "data": data},
          "build_report": {"raw": raw, "data": data, "model": model, "metrics": metrics, "params": params}}
for name, given in inputs.items():
    cache = getattr(stages, name).cache_policy
    print(cache.stage, cache.fingerprint(given))
"""


def _keys(project: Path) -> dict[str, str]:
    """Train's and report's keys as computed from the sources of `project`."""
    import subprocess

    done = subprocess.run([sys.executable, "-c", _KEYS], cwd=project, capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(project), "PREFECT_HOME": str(project / ".prefect"),
                               "PREFECT_SERVER_ANALYTICS_ENABLED": "false"})
    assert done.returncode == 0, done.stderr[-3000:]
    return dict(line.split() for line in done.stdout.splitlines())


@pytest.fixture
def project_copy(tmp_path):
    """The project's packages, copied: edited here, the real sources stay as they are."""
    import shutil

    for package in ("engine", "tasks", "flows"):
        shutil.copytree(ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))
    return tmp_path


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new))


def test_keys_follow_what_each_stage_computes(project_copy):
    before = _keys(project_copy)
    # A figure's size: only the report draws figures, the sample grid included.
    _edit(project_copy / "tasks" / "plots.py", "_DPI = 100", "_DPI = 120")
    after_plots = _keys(project_copy)
    assert {stage for stage in before if after_plots[stage] != before[stage]} == {"report"}
    # The model's layers: training computes something else (and what follows it, once it has).
    _edit(project_copy / "tasks" / "train.py", 'layers.Dense(64, activation="relu")',
          'layers.Dense(128, activation="relu")')
    after_layers = _keys(project_copy)
    assert {stage for stage in before if after_layers[stage] != after_plots[stage]} == {"train"}
    # A default: what later runs ask for, not what a stage computes with the values it is given.
    _edit(project_copy / "tasks" / "params.py", "Field(128,", "Field(256,")
    assert _keys(project_copy) == after_layers
    # The machinery: only STORE_VERSION reaches the keys.
    _edit(project_copy / "engine" / "store.py", '"""The artifact store', '# a comment\n"""The artifact store')
    assert _keys(project_copy) == after_layers
    _edit(project_copy / "engine" / "layout.py", "STORE_VERSION = ", "STORE_VERSION = 1 + ")
    bumped = _keys(project_copy)
    assert all(bumped[stage] != after_layers[stage] for stage in bumped)


def test_a_library_only_the_report_uses_reaches_only_the_reports_key(monkeypatch):
    from flows import stages

    def keys() -> dict[str, tuple[str, ...]]:
        return {name: getattr(stages, name).cache_policy.libraries for name in
                ("download_dataset", "preprocess_dataset", "train_model", "evaluate_model", "build_report")}

    using = {library: {name for name, libraries in keys().items() if library in libraries}
             for library in ("markdown", "jinja2", "matplotlib", "nh3", "tensorflow-datasets", "keras")}
    assert using == {"markdown": {"build_report"}, "jinja2": {"build_report"}, "matplotlib": {"build_report"},
                     "nh3": {"build_report"}, "tensorflow-datasets": {"download_dataset"},
                     "keras": {"train_model", "evaluate_model"}}
    cache = stages.build_report.cache_policy
    given = {"metrics": DATA}
    before = cache.fingerprint(given)
    real = caching.library_versions
    monkeypatch.setattr(caching, "library_versions", lambda names: {**real(names), **(
        {"markdown": "99.0"} if "markdown" in names else {})})
    assert cache.fingerprint(given) != before
    train = stages.train_model.cache_policy
    assert train.fingerprint({"data": DATA}) == StageCache(stage="train", module="tasks.train",
                                                           libraries=train.libraries).fingerprint({"data": DATA})


def test_the_machinery_and_other_stages_stay_out_of_every_key():
    for stage in ("download", "preprocess", "train", "evaluate", "report"):
        modules = project_modules(f"tasks.{stage}")
        assert not [m for m in modules if m.startswith("engine")], stage
        assert not [m for m in modules if m.rsplit(".", 1)[1] in {"download", "preprocess", "train", "evaluate",
                                                                    "report"} and m != f"tasks.{stage}"], stage


def test_the_store_guide_says_what_each_key_covers():
    import re

    from flows import stages

    guide = (ROOT / "docs" / "store.md").read_text()
    rows = dict(re.findall(r"^\| (\w+) \| (`tasks/.*`) \|$", guide, re.M))
    for name in ("download_dataset", "preprocess_dataset", "train_model", "evaluate_model", "build_report"):
        cache = getattr(stages, name).cache_policy
        covered = {f"tasks/{m.split('.', 1)[1].replace('.', '/')}.py" for m in project_modules(cache.module)}
        covered |= {f"tasks/templates/{path.name}" for path in cache.files}
        assert set(re.findall(r"`([^`]+)`", rows[cache.stage])) == covered, cache.stage


def test_only_what_is_imported_for_annotations_stays_out_of_a_key(helper_package):
    (helper_package / "stage.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                                             "    from pkgx import unused\nelse:\n    from pkgx import helper\n")
    assert project_modules("pkgx.stage") == ["pkgx.helper", "pkgx.leaf", "pkgx.stage"]


def test_stage_makes_a_cached_prefect_task_of_a_plain_function(tmp_path, monkeypatch):
    """What `stage()` makes of a function of tasks/: its task's signature, key, retries and serializer, and a run."""
    import inspect
    import json

    import prefect.artifacts

    from engine import layout, retries

    monkeypatch.setenv("MNIST_PIPELINE_STAGE_RETRIES", "3")
    monkeypatch.setenv("MNIST_PIPELINE_RETRY_DELAYS_S", "2,5")
    monkeypatch.setenv("MNIST_PIPELINE_RETRY_JITTER", "0.25")
    seen = {}

    def preprocess_dataset(out, raw, scale=2, *, work, log, downloads, progress, check_lock):
        """What the stage computes."""
        seen.update(raw=raw, scale=scale, work=work, log=log, downloads=downloads, check_lock=check_lock)
        work.mkdir(parents=True)
        (work / "checkpoint").write_text("kept between attempts")
        progress(50.0)
        (out / "weights.bin").write_bytes(b"w" * scale)
        return {"train_count": 1, "validation_count": 0, "test_count": 1, "test_sha256": "0" * 64}

    template = tmp_path / "page.j2"
    template.write_text("{{ x }}")

    def describe(inputs):
        return {"raw_checksum": "c"}

    # A stage is named by its module's last part.
    for module in ("preprocess", "tasks.preprocess", "project.tasks.preprocess"):
        preprocess_dataset.__module__ = module
        assert caching.stage(preprocess_dataset, libraries=[]).cache_policy.stage == "preprocess"
    preprocess_dataset.__module__ = "tasks.preprocess"
    task = caching.stage(preprocess_dataset, libraries=["numpy"], describe_inputs=describe, files=[template])
    assert task.name == task.fn.__name__ == task.fn.__qualname__ == "preprocess_dataset"
    assert task.fn.__doc__ == "What the stage computes."
    signature = inspect.signature(task.fn)
    assert list(signature.parameters) == ["artifacts_dir", "raw", "scale"]  # the extras are the stage's own
    assert signature.parameters["artifacts_dir"].annotation is str
    assert signature.parameters["artifacts_dir"].kind is inspect.Parameter.POSITIONAL_OR_KEYWORD
    assert signature.return_annotation is PreparedRef
    cache = task.cache_policy
    assert (cache.stage, cache.module, cache.describe_inputs, cache.files, cache.libraries) == (
        "preprocess", "tasks.preprocess", describe, (template,), ("numpy",))
    assert (task.persist_result, task.result_serializer) == (True, "json")
    assert (task.retries, task.retry_delay_seconds, task.retry_jitter_factor) == (3, [2.0, 5.0], 0.25)
    assert task.retry_condition_fn is retries.worth_retrying

    store = str(tmp_path / "store")
    upstream = _golden_entry(store)
    shown = []
    monkeypatch.setattr(prefect.artifacts, "create_progress_artifact", lambda **made: shown.append(made["key"]))
    monkeypatch.setattr(caching.TaskRunContext, "get", lambda: _in_a_task_run)  # as in a task run
    monkeypatch.setattr(caching, "get_run_logger", lambda: caching.log)
    ref = task.fn(store, upstream)  # the plain function, computing the entry
    assert ref.fingerprint == cache.fingerprint({"artifacts_dir": store, "raw": upstream, "scale": 2})
    assert seen["raw"] == upstream.at(store) and seen["raw"].located_in == ArtifactStore(store).path(upstream)
    assert seen["scale"] == 2 and seen["log"] is caching.log and seen["check_lock"] is caching._check_lock
    assert seen["work"] == layout.work(store, "preprocess", ref.fingerprint) and not seen["work"].exists()
    assert seen["downloads"] == Path(store) / layout.DOWNLOADS and shown == ["preprocess-progress"]
    assert ArtifactStore(store).problem("preprocess", ref.fingerprint) is None
    manifest = json.loads((ArtifactStore(store).path(ref) / layout.MANIFEST).read_text())
    assert manifest["inputs"] == [upstream.name] and manifest["versions"] == caching.library_versions(("numpy",))
    again = task.fn(artifacts_dir=store, raw=upstream, scale=3)
    assert again.fingerprint != ref.fingerprint and seen["scale"] == 3


def test_progress_is_one_artifact_made_at_the_first_report_then_updated(monkeypatch):
    import prefect.artifacts

    calls = []
    monkeypatch.setattr(prefect.artifacts, "create_progress_artifact",
                        lambda **made: calls.append(("create", made)) or "artifact-1")
    monkeypatch.setattr(prefect.artifacts, "update_progress_artifact", lambda **update: calls.append(("update", update)))
    outside = caching._progress_artifact("train")  # no task run: nobody to show it to
    assert outside(12.34) is None and calls == []
    monkeypatch.setattr(caching.TaskRunContext, "get", lambda: _in_a_task_run)
    report = caching._progress_artifact("train")
    report(12.34)
    report(50.06)
    assert calls == [("create", {"progress": 12.3, "key": "train-progress", "description": "Share of the train stage done"}),
                     ("update", {"artifact_id": "artifact-1", "progress": 50.1})]


def _transaction(monkeypatch, key, lost=None):
    """Prefect's transaction of a task run, as _check_lock and the fingerprint of a task run see it."""
    from types import SimpleNamespace

    class Locks:
        def __init__(self):
            self.asked = []

        def lost(self, asked):
            self.asked.append(asked)
            return lost

    transaction = SimpleNamespace(key=key, store=None if lost is None else SimpleNamespace(lock_manager=Locks()))
    monkeypatch.setattr(caching, "get_transaction", lambda: transaction)
    return transaction


def test_a_lock_lost_while_the_run_was_stopped_stops_the_stage(monkeypatch):
    from engine import retries

    key = "train/0123456789abcdef/result.json"
    monkeypatch.setattr(caching, "get_transaction", lambda: None)
    caching._check_lock()  # no transaction (outside a flow): nothing to lose
    _transaction(monkeypatch, key)
    caching._check_lock()  # no store of records: no locks
    transaction = _transaction(monkeypatch, key, lost=False)
    caching._check_lock()
    assert transaction.store.lock_manager.asked == [key]
    _transaction(monkeypatch, key, lost=True)
    with pytest.raises(retries.TransientError) as stopped:
        caching._check_lock()
    assert str(stopped.value) == ("the lock on train/0123456789abcdef expired while this run was stopped, and another "
                                  "run took over that entry: this run stopped writing to it; run again to be served "
                                  "its result")


def test_a_task_run_reuses_the_fingerprint_prefect_computed_for_its_stage_only(monkeypatch):
    monkeypatch.setattr(caching, "get_transaction", lambda: None)
    assert caching._fingerprint_of_this_task_run("train") is None
    _transaction(monkeypatch, "train/0123456789abcdef/result.json")
    assert caching._fingerprint_of_this_task_run("train") == "0123456789abcdef"
    assert caching._fingerprint_of_this_task_run("preprocess") is None
    for key in (None, "train/0123456789abcdeg/result.json", "train/0123456789abcdef/other.json"):
        _transaction(monkeypatch, key)
        assert caching._fingerprint_of_this_task_run("train") is None


def _golden_entry(store: str) -> PreparedRef:
    cache = StageCache(stage="preprocess", module="tasks.preprocess")

    def build(out, raw):
        (out / "train_x.npy").write_bytes(b"the same bytes")
        (out / "sub").mkdir()
        (out / "sub" / "y.npy").write_bytes(b"and these")
        return {"train_count": 3, "validation_count": 1, "test_count": 2, "test_sha256": "5" * 64}

    return cache.produce(build, store, {"raw": "r"})


def test_keys_stay_the_same_for_the_same_inputs_until_store_version_changes(tmp_path, monkeypatch):
    """A store's entries are found again by later releases: a key changes with what the stage computes from
    (pinned here with the source and library versions held fixed), or with STORE_VERSION, never by itself."""
    from engine import layout
    from tasks.params import TrainParams

    upstream = _golden_entry(str(tmp_path))
    assert ArtifactStore(tmp_path).content_digest(upstream) == (
        "e731decb95fb0ef924961f0656b56f7a26f8afa22ba4486662753f4dfe6d697b")
    monkeypatch.setattr(caching, "source_digest", lambda module, files=(): f"source of {module}, {list(files)}")
    monkeypatch.setattr(caching, "library_versions", lambda names: {name: "1.0" for name in names})
    cache = StageCache(stage="train", module="tasks.train", libraries=("numpy",),
                       describe_inputs=lambda inputs: {"seed_twice": inputs["params"].seed * 2})
    params = TrainParams(epochs=1, batch_size=8, learning_rate=0.001, lr_schedule="constant", seed=3)
    inputs = {"artifacts_dir": str(tmp_path), "data": upstream, "params": params, "mirror": Path("/data/mnist")}
    assert layout.STORE_VERSION == 4
    assert cache.fingerprint(inputs) == "48ca172ad4d67112"


def test_the_key_follows_the_files_a_stage_reads_and_what_describe_inputs_makes_of_its_inputs(tmp_path):
    template = tmp_path / "report.md.j2"
    template.write_text("{{ accuracy }}")
    cache = StageCache(stage="report", module="tasks.report", files=(template,),
                       describe_inputs=lambda inputs: {"checksum": inputs["mirror"].upper()})
    before = cache.fingerprint({"mirror": "a"})
    assert cache.fingerprint({"mirror": "b"}) != before
    template.write_text("{{ accuracy }} and more")
    source_digest.cache_clear()  # a process reads each source once
    assert cache.fingerprint({"mirror": "a"}) != before


def test_a_module_without_source_is_named(helper_package):
    with pytest.raises(ValueError, match="^module pkgx.missing has no source file$"):
        caching._source("pkgx.missing")


def test_produce_writes_the_entry_prefect_keyed_this_task_run_under(tmp_path, monkeypatch):
    """The entry is where Prefect's record key says, even if the inputs' key has moved on since."""
    from types import SimpleNamespace

    monkeypatch.setattr(caching, "get_transaction", lambda: SimpleNamespace(
        key="preprocess/00000000000000aa/result.json", store=None))
    cache = StageCache(stage="preprocess", module="tasks.preprocess")
    ref = cache.produce(_write, str(tmp_path), {"raw": "r"})
    assert ref.fingerprint == "00000000000000aa" and ArtifactStore(tmp_path).problem("preprocess", ref.fingerprint) is None


def test_a_served_entry_that_its_bucket_lacks_is_uploaded(memory_bucket):
    fs, host = memory_bucket
    copy = host("host-a")
    cache = StageCache(stage="preprocess", module="tasks.preprocess")
    ref = cache.produce(_write, str(copy.root), {"raw": "r"})
    fs.rm(f"team/mnist/preprocess/{ref.fingerprint}", recursive=True)
    from engine import store as store_module

    store_module._IN_BUCKET.clear()

    def must_not_build(out, raw):
        raise AssertionError("built again")

    assert cache.produce(must_not_build, str(copy.root), {"raw": "r"}) == ref
    assert fs.exists(f"team/mnist/preprocess/{ref.fingerprint}/manifest.json")


def test_the_run_logger_is_prefects_inside_a_task_run(monkeypatch):
    assert caching.run_logger() is caching.log
    monkeypatch.setattr(caching.TaskRunContext, "get", lambda: _in_a_task_run)
    monkeypatch.setattr(caching, "get_run_logger", lambda: "prefect's run logger")
    assert caching.run_logger() == "prefect's run logger"


@pytest.mark.parametrize("task_run_name, key, description", [
    ("train_model-4a1", "train-progress", "Share of the train stage done"),
    ("train_model[lr=0.006 batch=32 seed=0]", "train-progress-lr-0-006-batch-32-seed-0",
     "Share of the train stage done: lr=0.006 batch=32 seed=0"),
    ("train_model[(lr=0.1, seed=7)]", "train-progress-lr-0-1-seed-7", "Share of the train stage done: (lr=0.1, seed=7)"),
])
def test_a_progress_artifact_is_named_after_its_sweep_combination(monkeypatch, task_run_name, key, description):
    """A sweep's training task runs each show their own progress, told apart by their combination."""
    from types import SimpleNamespace

    import prefect.artifacts

    made, updated = [], []
    monkeypatch.setattr(caching.TaskRunContext, "get", lambda: SimpleNamespace(task_run=SimpleNamespace(
        name=task_run_name)))
    monkeypatch.setattr(prefect.artifacts, "create_progress_artifact", lambda **made_with: made.append(made_with) or "id")
    monkeypatch.setattr(prefect.artifacts, "update_progress_artifact", lambda **update: updated.append(update))
    report = caching._progress_artifact("train")
    report(10.04)
    report(55.55)
    assert made == [{"progress": 10.0, "key": key, "description": description}]
    assert updated == [{"artifact_id": "id", "progress": 55.5}]
