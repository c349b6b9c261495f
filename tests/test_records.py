"""Prefect's records of the stages: always made from the verified entry, never read from the store."""

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest
from prefect.results import ResultRecord, ResultRecordMetadata, ResultStore
from prefect.serializers import JSONSerializer, PickleSerializer

from engine.caching import EntryRecords, StageCache, record_key
from tasks.refs import MetricsRef
from engine.store import MANIFEST, REF, ArtifactStore, sha256_file

# One per process: the test lanes (pytest-xdist) run test_pipeline.py's use of it at the same time.
MARKER = Path(tempfile.gettempdir()) / f"mnist-pipeline-record-ran-code-{os.getpid()}"


def _mark(*args, **kwargs):
    """What a crafted record would run if it were deserialized."""
    MARKER.write_text("ran")
    return {}


@dataclass
class Marker:
    data: dict

    def __post_init__(self):
        _mark()


class Payload:
    def __reduce__(self):
        return (_mark, ())


@pytest.fixture
def entry(tmp_path):
    MARKER.unlink(missing_ok=True)
    cache = StageCache(stage="evaluate", module="tasks.evaluate")
    ref = cache.produce(lambda out, model: {"test_accuracy": 0.843, "test_loss": 0.5, "test_count": 1,
                                            "test_sha256": "0" * 64}, str(tmp_path), {"model": "m"})
    yield tmp_path, ref
    MARKER.unlink(missing_ok=True)


def _read(root: Path, key: str):
    store = ResultStore(result_storage=EntryRecords(basepath=str(root)), serializer=JSONSerializer())
    assert store.exists(key)
    return store.read(key).result


def _record(ref: MetricsRef, serializer, result=None) -> bytes:
    metadata = ResultRecordMetadata(storage_key="x", serializer=serializer)
    return ResultRecord(result=ref if result is None else result, metadata=metadata).serialize()


def test_prefect_reads_the_entry_as_its_stage_reference(entry):
    root, ref = entry
    served = _read(root, record_key(ref.stage, ref.fingerprint))
    assert isinstance(served, MetricsRef) and served == ref


def _crafted(root: Path, ref: MetricsRef, kind: str) -> bytes:
    if kind == "pickle":
        return _record(ref, PickleSerializer(), Payload())
    if kind == "object_decoder":
        blob = json.loads(_record(ref, JSONSerializer()))
        blob["metadata"]["serializer"]["object_decoder"] = f"{__name__}._mark"
        return json.dumps(blob).encode()
    if kind == "__class__":
        blob = json.loads(_record(ref, JSONSerializer()))
        blob["result"] = json.dumps({"__class__": f"{__name__}.Marker", "data": {"data": {}}})
        return json.dumps(blob).encode()
    if kind == "forged accuracy":
        return _record(ref.model_copy(update={"test_accuracy": 0.999}), JSONSerializer())
    if kind == "traversing fingerprint":
        blob = json.loads(_record(ref, JSONSerializer()))
        result = json.loads(blob["result"])
        result["data"]["fingerprint"] = "../../elsewhere/train/x"
        blob["result"] = json.dumps(result)
        return json.dumps(blob).encode()
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["pickle", "object_decoder", "__class__", "forged accuracy", "traversing fingerprint"])
def test_a_crafted_record_is_never_deserialized(entry, kind):
    root, ref = entry
    key = record_key(ref.stage, ref.fingerprint)
    (root / key).write_bytes(_crafted(root, ref, kind))
    assert _read(root, key) == ref
    assert not MARKER.exists()


def test_a_crafted_record_with_prefects_own_storage_would_run_code(entry):
    # What the test above guards against: Prefect's LocalFileSystem deserializes what the record names.
    from prefect.filesystems import LocalFileSystem

    root, ref = entry
    key = record_key(ref.stage, ref.fingerprint)
    (root / key).write_bytes(_crafted(root, ref, "pickle"))
    ResultStore(result_storage=LocalFileSystem(basepath=str(root))).read(key)
    assert MARKER.exists()


def _reseal(entry_dir: Path) -> None:
    """Rewrite the manifest so that altered files pass their checksums."""
    manifest = json.loads((entry_dir / MANIFEST).read_text())
    for name, info in manifest["files"].items():
        info["sha256"], info["bytes"] = sha256_file(entry_dir / name), (entry_dir / name).stat().st_size
    (entry_dir / MANIFEST).write_text(json.dumps(manifest))


@pytest.mark.parametrize("field, value", [("fingerprint", "../../elsewhere/train/x"), ("stage", "train"),
                                          ("fingerprint", "0123456789abcdef")])
def test_a_ref_that_names_another_entry_is_not_served(entry, field, value):
    root, ref = entry
    folder = ArtifactStore(root).path(ref)
    blob = json.loads((folder / REF).read_text())
    blob[field] = value
    (folder / REF).write_text(json.dumps(blob))
    _reseal(folder)
    problem = ArtifactStore(root).problem(ref.stage, ref.fingerprint)
    assert problem is not None and "does not name this entry" in problem
    with pytest.raises(ValueError, match="is not served"):
        EntryRecords(basepath=str(root)).read_path(record_key(ref.stage, ref.fingerprint))


def test_a_broken_entry_reads_as_absent(entry):
    root, ref = entry
    (ArtifactStore(root).path(ref) / "metrics.json").write_text("{}")  # not in the entry: the manifest
    (ArtifactStore(root).path(ref) / REF).write_text(ref.model_copy(update={"test_accuracy": 0.999}).model_dump_json())
    store = ResultStore(result_storage=EntryRecords(basepath=str(root)), serializer=JSONSerializer())
    assert not store.exists(record_key(ref.stage, ref.fingerprint))


@pytest.mark.parametrize("key", ["evaluate/../../x/result.json", "a1b2c3d4-uuid", "nostage/0123456789abcdef/result.json"])
def test_other_keys_are_never_read(entry, key):
    root, _ = entry
    with pytest.raises(ValueError, match="not a stage's record"):
        EntryRecords(basepath=str(root)).read_path(key)


def test_prefects_writes_leave_the_entry_as_it_is(entry):
    root, ref = entry
    folder = ArtifactStore(root).path(ref)
    before = sorted(p.name for p in folder.iterdir())
    EntryRecords(basepath=str(root)).write_path(record_key(ref.stage, ref.fingerprint), b"anything")
    assert sorted(p.name for p in folder.iterdir()) == before


def test_the_record_made_from_an_entry_names_json_and_the_entry(entry):
    """What Prefect gets: a JSON record of the entry's reference, its storage key inside the entry, never pickle."""
    import asyncio

    root, ref = entry
    key = record_key(ref.stage, ref.fingerprint)
    records = EntryRecords(basepath=str(root))
    blob = json.loads(records.read_path(key))
    assert blob["metadata"]["serializer"]["type"] == "json"
    assert blob["metadata"]["storage_key"] == str(ArtifactStore(root).path(ref) / "result.json")
    assert json.loads(blob["result"])["data"] == json.loads(ref.model_dump_json())
    assert asyncio.run(records.aread_path(key)) == records.read_path(key)
    # Prefect's writes are dropped, and it is told where the record is.
    assert records.write_path(key, b"anything") == str(root / key)
    assert asyncio.run(records.awrite_path(key, b"anything")) == str(root / key)
    assert not (root / key).exists()
