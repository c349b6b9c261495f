import importlib
import sys

import pytest

from tasks import caching
from tasks.caching import StageCache, project_modules, source_digest
from tasks.config import TrainParams
from tasks.refs import PreparedRef
from tasks.store import ArtifactStore

DATA = PreparedRef(stage="preprocess", fingerprint="f00d", train_count=1, test_count=1)


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
    assert project_modules("pkgx.stage", "pkgx") == ["pkgx.helper", "pkgx.leaf", "pkgx.stage"]


def test_editing_a_helper_changes_the_digest(helper_package):
    before = source_digest("pkgx.stage", "pkgx")
    (helper_package / "leaf.py").write_text("SCALE = 256\n")
    source_digest.cache_clear()
    importlib.invalidate_caches()
    assert source_digest("pkgx.stage", "pkgx") != before


def test_train_depends_on_the_modules_it_runs():
    modules = project_modules("tasks.train")
    assert {"tasks.train", "tasks.preprocess", "tasks.config", "tasks.store"} <= set(modules)
    assert "tasks.report" not in modules


def test_fingerprint_follows_parameters_and_upstream_not_location():
    cache = StageCache(stage="train", module="tasks.train")
    base = cache.fingerprint({"artifacts_dir": "a", "data": DATA, "params": TrainParams()})
    assert base == cache.fingerprint({"artifacts_dir": "elsewhere", "data": DATA, "params": TrainParams()})
    assert base != cache.fingerprint({"artifacts_dir": "a", "data": DATA, "params": TrainParams(epochs=4)})
    other = DATA.model_copy(update={"fingerprint": "beef"})
    assert base != cache.fingerprint({"artifacts_dir": "a", "data": other, "params": TrainParams()})


def test_library_versions_enter_the_fingerprint(monkeypatch):
    cache = StageCache(stage="train", module="tasks.train")
    inputs = {"data": DATA, "params": TrainParams()}
    before = cache.fingerprint(inputs)
    monkeypatch.setattr(caching, "library_versions", lambda: {"tensorflow": "9.9.9"})
    assert cache.fingerprint(inputs) != before


def test_cache_key_points_inside_the_entry(tmp_path):
    cache = StageCache(stage="train", module="tasks.train")
    inputs = {"artifacts_dir": str(tmp_path), "data": DATA, "params": TrainParams()}
    key = cache.compute_key(None, inputs, {})
    assert key == f"train/{cache.fingerprint(inputs)}/result.json"


def test_broken_entry_is_evicted_when_the_key_is_computed(tmp_path):
    cache = StageCache(stage="train", ref_type=PreparedRef, module="tasks.train")
    inputs = {"artifacts_dir": str(tmp_path), "data": DATA, "params": TrainParams()}
    ref = cache.produce(lambda out: _write(out), **inputs)
    entry = tmp_path / "train" / ref.fingerprint
    (entry / "weights.bin").write_bytes(b"garbage")
    cache.compute_key(None, inputs, {})
    assert not entry.exists()


def test_produce_serves_an_intact_entry_without_building(tmp_path):
    cache = StageCache(stage="train", ref_type=PreparedRef, module="tasks.train")
    inputs = {"artifacts_dir": str(tmp_path), "data": DATA, "params": TrainParams()}
    first = cache.produce(_write, **inputs)

    def must_not_build(out):
        raise AssertionError("built again")

    assert cache.produce(must_not_build, **inputs) == first


@pytest.mark.parametrize("damage", ["missing", "cut short"])
def test_intact_entry_gets_back_a_lost_cache_record(tmp_path, damage):
    # Killed after publishing the entry, before Prefect wrote its record.
    from prefect.results import ResultRecord

    cache = StageCache(stage="train", ref_type=PreparedRef, module="tasks.train")
    inputs = {"artifacts_dir": str(tmp_path), "data": DATA, "params": TrainParams()}
    ref = cache.produce(_write, **inputs)
    record = tmp_path / cache.compute_key(None, inputs, {})
    assert ResultRecord.deserialize(record.read_bytes()).result == ref
    if damage == "missing":
        record.unlink()
    else:
        record.write_bytes(record.read_bytes()[:40])
    cache.compute_key(None, inputs, {})
    assert ResultRecord.deserialize(record.read_bytes()).result == ref


def test_no_record_is_made_up_for_a_missing_entry(tmp_path):
    cache = StageCache(stage="train", ref_type=PreparedRef, module="tasks.train")
    inputs = {"artifacts_dir": str(tmp_path), "data": DATA, "params": TrainParams()}
    cache.compute_key(None, inputs, {})
    assert not (tmp_path / "train").exists()


def _write(out):
    (out / "weights.bin").write_bytes(b"w" * 100)
    return {"train_count": 1, "test_count": 1}


def test_downstream_key_follows_what_the_upstream_entry_holds(tmp_path):
    upstream = StageCache(stage="preprocess", ref_type=PreparedRef, module="tasks.preprocess")
    downstream = StageCache(stage="train", module="tasks.train")
    store = str(tmp_path)

    def build_with(content: bytes):
        def build(out):
            (out / "train_x.npy").write_bytes(content)
            return {"train_count": 1, "test_count": 1}
        return build

    first = upstream.produce(build_with(b"A"), store, raw="r")
    before = downstream.fingerprint({"artifacts_dir": store, "data": first, "params": TrainParams()})
    # The same upstream inputs computed again, but coming out different this time.
    ArtifactStore(store).evict(first.stage, first.fingerprint)
    again = upstream.produce(build_with(b"B"), store, raw="r")
    assert again.fingerprint == first.fingerprint
    after = downstream.fingerprint({"artifacts_dir": store, "data": again, "params": TrainParams()})
    assert after != before
