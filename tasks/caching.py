"""Prefect caching keyed on what a stage's output depends on, verified on every hit.

A stage's fingerprint hashes its own inputs (upstream entries by their
fingerprints), the source of the project modules it runs (found by following its imports), and the versions of
the libraries that compute it. Prefect's record of a stage's result is the
entry itself: whenever Prefect reads it, it is rebuilt from the entry's
verified `ref.json`, so nothing stored beside the entry is ever deserialized.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import platform
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

from prefect import task
from prefect.cache_policies import CachePolicy
from prefect.filesystems import LocalFileSystem
from pydantic import BaseModel

from tasks import retries
from tasks.refs import REF_TYPES, EntryRef
from tasks.store import REF, ArtifactStore

# The libraries whose numerics or data a stage's output depends on.
_LIBRARIES = ("tensorflow", "tensorflow-cpu", "keras", "tensorflow-datasets", "numpy", "h5py",
              "pandas", "matplotlib", "pillow", "tabulate")
# Task inputs that say where the store is, not what goes into it.
_LOCATION_INPUTS = frozenset({"artifacts_dir"})
RECORD = "result.json"

log = logging.getLogger(__name__)


_PACKAGE = "tasks"


def project_modules(root: str, package: str = _PACKAGE) -> list[str]:
    """`root` and every project module it imports, directly or through another."""
    seen, todo = set(), [root]
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo.extend(_imports(name, package))
    return sorted(seen)


def _imports(module: str, package: str) -> set[str]:
    # Read from the source, so a constant imported by name counts too.
    tree = ast.parse(_source_path(module).read_bytes())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {name for name in found if name.startswith(f"{package}.") and _is_module(name)}


def _is_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:  # `name` is a class or constant of a module
        return False


def _source_path(module: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise ValueError(f"module {module} has no source file")
    return Path(spec.origin)


@lru_cache(maxsize=None)
def source_digest(root: str, package: str = _PACKAGE) -> str:
    """SHA-256 over the source of `root` and every project module it uses."""
    digest = hashlib.sha256()
    for name in project_modules(root, package):
        digest.update(name.encode())
        digest.update(_source_path(name).read_bytes())
    return digest.hexdigest()


@lru_cache(maxsize=None)
def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in _LIBRARIES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def _canonical(value: Any, store: Optional[ArtifactStore]) -> Any:
    if isinstance(value, EntryRef):
        # What the upstream entry holds, not only what it was asked to compute: an
        # upstream stage computed again (after eviction, on another device) may
        # come out different, and then what follows it must be computed again too.
        return {"stage": value.stage, "fingerprint": value.fingerprint,
                "content": store.content_digest(value) if store else None}
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    return value


@dataclass
class StageCache(CachePolicy):
    """Cache one stage's output in the artifact store under its fingerprint."""

    stage: str = ""
    # The stage's module: its source, and that of the project modules it uses,
    # decide the stage's output.
    module: str = ""
    # Extra key material computed from the inputs, e.g. the checksums of mirror files.
    describe_inputs: Optional[Callable[[Mapping[str, Any]], Mapping[str, Any]]] = None

    def fingerprint(self, inputs: Mapping[str, Any]) -> str:
        """The stage's key for `inputs`: the task's arguments, `artifacts_dir` included."""
        store = ArtifactStore(inputs["artifacts_dir"]) if "artifacts_dir" in inputs else None
        relevant = {k: v for k, v in inputs.items() if k not in _LOCATION_INPUTS}
        if self.describe_inputs is not None:
            relevant.update(self.describe_inputs(relevant))
        material = {
            "stage": self.stage,
            "inputs": {k: _canonical(v, store) for k, v in sorted(relevant.items())},
            "source": source_digest(self.module),
            "versions": library_versions(),
        }
        blob = json.dumps(material, sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def compute_key(self, task_ctx, inputs, flow_parameters, **kwargs) -> Optional[str]:
        """Where Prefect looks for the stage's record: inside the entry (see EntryRecords)."""
        return record_key(self.stage, self.fingerprint(inputs))

    def produce(
        self,
        build: Callable[[Path], Mapping[str, Any]],
        artifacts_dir: str,
        **inputs: Any,
    ) -> EntryRef:
        """The stage's entry: served from the store when intact, else built and published.

        `build(folder)` writes the stage's files into `folder` and returns the
        reference's fields besides stage and fingerprint.
        """
        store = ArtifactStore(artifacts_dir)
        fingerprint = self.fingerprint({"artifacts_dir": artifacts_dir, **inputs})
        if store.exists(self.stage, fingerprint) and not _discard_if_broken(
            store, self.stage, fingerprint
        ):
            return store.load_ref(self.stage, fingerprint)
        with store.writing(self.stage, fingerprint) as folder:
            ref = REF_TYPES[self.stage](stage=self.stage, fingerprint=fingerprint, **build(folder))
            (folder / REF).write_text(ref.model_dump_json(indent=1))
        return ref


def record_key(stage: str, fingerprint: str) -> str:
    return f"{stage}/{fingerprint}/{RECORD}"


_RECORD_KEY = re.compile(rf"^([a-z]+)/([0-9a-f]{{16}})/{re.escape(RECORD)}$")


class EntryRecords(LocalFileSystem):
    """Prefect's result storage for the stages: each record is made from its verified entry.

    Prefect reads a cached result by deserializing the record at the stage's key
    with whatever serializer the record names, so an altered record could name
    pickle, or a class to import. Here no record is ever read from disk: reading
    the key `<stage>/<fingerprint>/result.json` yields the entry's `ref.json`,
    validated as that stage's reference type, and only while every file of the
    entry matches its manifest. Anything else reads as absent, so Prefect runs
    the stage, which replaces a broken entry. Prefect's writes are dropped: the
    entry is the record, and a failure's record is never read back.
    """

    _block_type_name = "mnist-pipeline entry records"

    def read_path(self, path: str, _sync: Optional[bool] = None) -> bytes:
        from prefect.results import ResultRecord, ResultRecordMetadata
        from prefect.serializers import JSONSerializer

        match = _RECORD_KEY.match(path)
        if match is None or match[1] not in REF_TYPES:
            raise ValueError(f"{path} is not a stage's record")
        store = ArtifactStore(self.basepath)
        problem = store.problem(match[1], match[2])
        if problem is not None:
            raise ValueError(f"{path} is not served: {problem}")
        ref = store.load_ref(match[1], match[2])
        metadata = ResultRecordMetadata(storage_key=str(store.entry(ref.stage, ref.fingerprint) / RECORD),
                                        serializer=JSONSerializer())
        return ResultRecord(result=ref, metadata=metadata).serialize()

    async def aread_path(self, path: str) -> bytes:
        return self.read_path(path)

    def write_path(self, path: str, content: bytes, _sync: Optional[bool] = None) -> str:
        return str(Path(self.basepath) / path)

    async def awrite_path(self, path: str, content: bytes) -> str:
        return self.write_path(path, content)


def stage_task(cache: StageCache):
    """`@task` for a stage: cached in the store, results as JSON, transient failures retried."""
    return task(
        cache_policy=cache,
        persist_result=True,
        # JSON, not pickle: reading a result back never runs code from the store.
        result_serializer="json",
        retries=retries.RETRIES,
        retry_delay_seconds=retries.RETRY_DELAYS_S,
        retry_jitter_factor=retries.RETRY_JITTER,
        retry_condition_fn=retries.worth_retrying,
    )


def _discard_if_broken(store: ArtifactStore, stage: str, fingerprint: str) -> bool:
    """Evict an entry that fails verification; True if one was evicted."""
    if not store.exists(stage, fingerprint):
        return False
    problem = store.problem(stage, fingerprint)
    if problem is None:
        return False
    run_logger().warning("Recomputing %s: %s", stage, problem)
    store.evict(stage, fingerprint)
    return True


def run_logger() -> logging.Logger | logging.LoggerAdapter:
    """Prefect's run logger inside a task run (the UI shows it), else a plain logger."""
    from prefect.context import TaskRunContext
    from prefect.logging import get_run_logger

    return get_run_logger() if TaskRunContext.get() else log
