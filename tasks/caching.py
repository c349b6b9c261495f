"""Prefect caching keyed on what a stage's output depends on, verified on every hit.

A stage's fingerprint hashes its own inputs (upstream entries by their
fingerprints), the source of the project modules it runs (found by following its imports), and the versions of
the libraries that compute it. Prefect keeps its result record inside the
entry (`<stage>/<fingerprint>/result.json`), so removing a broken entry also
removes the record, and Prefect computes the stage again.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.metadata
import importlib.util
import json
import uuid
import logging
import platform
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

from prefect import task
from prefect.cache_policies import CachePolicy
from pydantic import BaseModel

from tasks import retries
from tasks.refs import EntryRef
from tasks.store import REF, ArtifactStore, write_atomically

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
    # What the stage returns: a reference to its entry.
    ref_type: type[EntryRef] = EntryRef
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
        store = ArtifactStore(inputs["artifacts_dir"])
        fingerprint = self.fingerprint(inputs)
        key = f"{self.stage}/{fingerprint}/{RECORD}"
        if not store.exists(self.stage, fingerprint):
            return key
        # Judge under the key's lock: a run holding it may be replacing the entry.
        holder = f"check-{uuid.uuid4().hex}"
        if self.lock_manager is not None:
            self.lock_manager.acquire_lock(key, holder)
        try:
            if not _discard_if_broken(store, self.stage, fingerprint):
                self._restore_record(store, fingerprint)
        except Exception as err:  # only a shortcut: without it the stage runs and serves the entry
            run_logger().warning("Could not restore the cache record of the %s entry %s: %s",
                                 self.stage, fingerprint, err)
        finally:
            if self.lock_manager is not None:
                self.lock_manager.release_lock(key, holder)
        return key

    def _restore_record(self, store: ArtifactStore, fingerprint: str) -> None:
        """Write Prefect's record of an intact entry that lacks a readable one.

        The entry is published before Prefect writes its record; a run killed in
        between leaves an entry without one. Prefect would run the stage again
        (and report `Completed`) only to be handed the same entry.
        """
        from prefect.results import ResultRecord, ResultRecordMetadata
        from prefect.serializers import JSONSerializer

        record = store.entry(self.stage, fingerprint) / RECORD
        try:
            ResultRecord.deserialize(record.read_bytes())
            return
        except FileNotFoundError:
            pass
        except Exception as err:  # cut short or altered: Prefect would not read it either
            run_logger().warning("Rewriting the unreadable cache record %s (%s)", record, err)

        ref = self.ref_type.model_validate_json(store.read_ref(self.stage, fingerprint))
        metadata = ResultRecordMetadata(storage_key=str(record.resolve()), serializer=JSONSerializer())
        write_atomically(record, ResultRecord(result=ref, metadata=metadata).serialize().decode())
        run_logger().info("Restored the cache record of the %s entry %s", self.stage, fingerprint)

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
            return self.ref_type.model_validate_json(store.read_ref(self.stage, fingerprint))
        with store.writing(self.stage, fingerprint) as folder:
            ref = self.ref_type(stage=self.stage, fingerprint=fingerprint, **build(folder))
            (folder / REF).write_text(ref.model_dump_json(indent=1))
        return ref


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
