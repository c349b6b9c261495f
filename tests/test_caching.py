import importlib
import sys

import pytest

from tasks.engine import caching
from tasks.engine.caching import StageCache, project_modules, source_digest
from flows.config import train_params
from tasks.engine.refs import PreparedRef
from tasks.engine.store import ArtifactStore

DATA = PreparedRef(stage="preprocess", fingerprint="00000000f00df00d", train_count=1, test_count=1)


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


def test_train_depends_on_the_modules_it_runs_and_no_more():
    modules = project_modules("tasks.train")
    assert set(modules) == {"tasks.train", "tasks.checkpoint", "tasks.params", "tasks.runtime"}


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
    monkeypatch.setattr(caching, "library_versions", lambda: {"tensorflow": "9.9.9"})
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
    return {"train_count": 1, "test_count": 1}


def test_cache_key_names_the_entry(tmp_path):
    cache = StageCache(stage="train", module="tasks.train")
    inputs = {"artifacts_dir": str(tmp_path), "data": DATA, "params": train_params()}
    key = cache.compute_key(None, inputs, {})
    assert key == f"train/{cache.fingerprint(inputs)}/result.json"


def test_downstream_key_follows_what_the_upstream_entry_holds(tmp_path):
    upstream = StageCache(stage="preprocess", module="tasks.preprocess")
    downstream = StageCache(stage="train", module="tasks.train")
    store = str(tmp_path)

    def build_with(content: bytes):
        def build(out, raw):
            (out / "train_x.npy").write_bytes(content)
            return {"train_count": 1, "test_count": 1}
        return build

    first = upstream.produce(build_with(b"A"), store, {"raw": "r"})
    before = downstream.fingerprint({"artifacts_dir": store, "data": first, "params": train_params()})
    # The same upstream inputs computed again, but coming out different this time.
    ArtifactStore(store).evict(first.stage, first.fingerprint)
    again = upstream.produce(build_with(b"B"), store, {"raw": "r"})
    assert again.fingerprint == first.fingerprint
    after = downstream.fingerprint({"artifacts_dir": store, "data": again, "params": train_params()})
    assert after != before


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
    from tasks.engine.caching import EntryRecords, record_key
    from tasks.engine.store import StoreError

    cache = StageCache(stage="preprocess", module="tasks.preprocess")
    ref = cache.produce(_write, str(tmp_path), {"raw": "r"})
    folder = tmp_path / "preprocess" / ref.fingerprint
    with open(folder / "weights.bin", "r+b") as f:
        f.write(b"W")
    immutable(folder)
    with pytest.raises(ValueError, match="is not served: .*weights.bin does not match its checksum"):
        EntryRecords(basepath=str(tmp_path)).read_path(record_key(ref.stage, ref.fingerprint))
    with pytest.raises(StoreError, match=f"the preprocess entry {folder} is damaged and cannot be removed "
                                         r"\(Operation not permitted\); remove it by hand"):
        cache.produce(_write, str(tmp_path), {"raw": "r"})
