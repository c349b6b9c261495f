"""Stages as cached Prefect tasks, keyed on what their output depends on, verified on every hit.

A stage's key (the fingerprint) hashes its inputs (upstream entries by their
contents), the source of its module and the project modules it uses (engine's
machinery excepted: STORE_VERSION stands for it), and the versions of the
libraries that compute it. Prefect's record of a stage's result is the entry
itself, rebuilt from its verified `ref.json` whenever Prefect reads it, so
nothing stored beside the entry is ever deserialized.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.metadata
import importlib.util
import inspect
import json
import logging
import platform
import re
import shutil
from contextlib import suppress
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence, Union

from prefect import Task, task
from prefect.cache_policies import CachePolicy
from prefect.context import TaskRunContext
from prefect.filesystems import LocalFileSystem
from prefect.logging import get_run_logger
from prefect.transactions import get_transaction
from pydantic import BaseModel

from engine import layout, locking, retries
from engine.layout import RECORD, record_key
from engine.refs import EntryRef, ref_type, stages
from engine.settings import settings
from engine.store import ArtifactStore

log = logging.getLogger(__name__)


def project_modules(root: str) -> list[str]:
    """`root` and every module of its package that it imports, directly or through another."""
    package = root.split(".")[0]
    seen, todo = set(), [root]
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo.extend(_imports(name, package))
    return sorted(seen)


def _imports(module: str, package: str) -> set[str]:
    # Read from the source, so a constant imported by name counts too; what is imported
    # for annotations only (under TYPE_CHECKING) never runs, so it computes nothing.
    tree, found = ast.parse(_source(module)), set()
    unrun = {id(node) for block in ast.walk(tree) if isinstance(block, ast.If)
             and ast.unparse(block.test).endswith("TYPE_CHECKING") for line in block.body for node in ast.walk(line)}
    for node in ast.walk(tree):
        if id(node) in unrun:
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.update([node.module, *(f"{node.module}.{alias.name}" for alias in node.names)])
    return {name for name in found if name.startswith(f"{package}.") and _is_module(name)}


def _is_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:  # `name` is a class or constant of a module
        return False


def _source(module: str) -> bytes:
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise ValueError(f"module {module} has no source file")
    return Path(spec.origin).read_bytes()


@lru_cache(maxsize=None)
def library_versions(names: Iterable[str]) -> dict[str, str]:
    """Python's version and those of `names` (distribution names) that are installed."""
    versions = {"python": platform.python_version()}
    for name in names:
        with suppress(importlib.metadata.PackageNotFoundError):
            versions[name] = importlib.metadata.version(name)
    return versions


@lru_cache(maxsize=None)
def source_digest(root: str, files: tuple[Path, ...] = ()) -> str:
    """SHA-256 over the source of `root`, every module of its package it uses, and `files` (its templates)."""
    digest = hashlib.sha256()
    for name in project_modules(root):
        digest.update(name.encode() + _source(name))
    for path in sorted(files):
        digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()


def _canonical(value: Any, store: Optional[ArtifactStore]) -> Any:
    if isinstance(value, EntryRef):
        # What the upstream entry holds, not how it came to be: an upstream stage computed
        # again (its source edited, another device) that comes out the same changes nothing
        # here, and one that comes out different makes this stage compute again.
        return {"stage": value.stage, "content": (store and store.content_digest(value)) or value.fingerprint}
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    return value


@dataclass
class StageCache(CachePolicy):
    """Cache one stage's output in the artifact store under its fingerprint."""

    stage: str = ""
    # The stage's module: its source and that of the project modules it uses decide the output.
    module: str = ""
    # Extra key material computed from the inputs, e.g. the checksums of mirror files.
    describe_inputs: Optional[Callable[[Mapping[str, Any]], Mapping[str, Any]]] = None
    # Files besides modules that decide the output (the report's templates).
    files: tuple[Path, ...] = field(default_factory=tuple)
    # The libraries whose numerics or data the stage's output depends on (PyPI names).
    libraries: tuple[str, ...] = ()

    def fingerprint(self, inputs: Mapping[str, Any]) -> str:
        """The stage's key for `inputs`: the task's arguments, `artifacts_dir` included."""
        store = ArtifactStore(inputs["artifacts_dir"]) if "artifacts_dir" in inputs else None
        relevant = {k: v for k, v in inputs.items() if k != "artifacts_dir"}  # where, not what
        if self.describe_inputs is not None:
            relevant.update(self.describe_inputs(relevant))
        material = {
            "store_version": layout.STORE_VERSION,
            "stage": self.stage,
            "inputs": {k: _canonical(v, store) for k, v in sorted(relevant.items())},
            "source": source_digest(self.module, files=self.files),
            "versions": library_versions(self.libraries),
        }
        blob = json.dumps(material, sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def compute_key(self, task_ctx, inputs, flow_parameters, **kwargs) -> Optional[str]:
        """Where Prefect looks for the stage's record: inside the entry (see EntryRecords)."""
        return record_key(self.stage, self.fingerprint(inputs))

    def produce(self, compute: Callable[..., Mapping[str, Any]], artifacts_dir: str,
                inputs: Mapping[str, Any]) -> EntryRef:
        """The stage's entry: served from the store when intact, else computed by `compute` (see stage())."""
        store = ArtifactStore(artifacts_dir)
        # Prefect computed it a moment ago, for its record's key.
        fingerprint = _fingerprint_of_this_task_run(self.stage) or self.fingerprint(
            {"artifacts_dir": artifacts_dir, **inputs})
        if store.exists(self.stage, fingerprint):
            problem = store.problem(self.stage, fingerprint)
            if problem is None:
                return _served(store, self.stage, fingerprint)
            run_logger().warning("Recomputing %s: %s", self.stage, problem)
            store.evict(self.stage, fingerprint)
        located = {k: v.at(store.root) if isinstance(v, EntryRef) else v for k, v in inputs.items()}
        work = layout.work(store.root, self.stage, fingerprint)
        extras = {"work": lambda: work, "downloads": lambda: store.root / layout.DOWNLOADS, "log": run_logger,
                  "progress": lambda: _progress_artifact(self.stage),
                  "check_lock": lambda: _check_lock}
        wanted = {name: extras[name]() for name, p in inspect.signature(compute).parameters.items()
                  if p.kind is p.KEYWORD_ONLY}
        upstream = [ref.name for ref in inputs.values() if isinstance(ref, EntryRef)]
        with store.writing(self.stage, fingerprint, upstream, library_versions(self.libraries)) as folder:
            ref = ref_type(self.stage)(stage=self.stage, fingerprint=fingerprint,
                                        **compute(folder, **located, **wanted))
            (folder / layout.REF).write_text(ref.model_dump_json(indent=1))
            _check_lock()  # before publishing
        # The entry is complete: what the stage kept between attempts has served its purpose.
        shutil.rmtree(work, ignore_errors=True)
        return ref


def stage(compute: Callable[..., Mapping[str, Any]], *, libraries: Sequence[str],
          describe_inputs: Optional[Callable[[Mapping[str, Any]], Mapping[str, Any]]] = None,
          files: Sequence[Path] = ()) -> Task:
    """The cached Prefect task `<compute's name>(artifacts_dir, *inputs)`: its stage is its module's name.

    `compute(out, *inputs)` writes the entry's files into the folder `out` and
    returns its reference's fields. Of the keyword-only extras it declares,
    each gets its own: `work` (a folder kept between attempts, removed once the
    entry is complete), `downloads` (the store's folder for downloads), `log`
    (the run logger), `progress` (percent done, shown live in the UI), and
    `check_lock` (call it before writing to `work`: it raises once the stage's
    lock was lost to another run). The versions of `libraries` and the
    contents of `files` (templates) are part of its key.
    """
    name = compute.__module__.rsplit(".", 1)[-1]
    signature = inspect.signature(compute)
    inputs = [p for p in list(signature.parameters.values())[1:] if p.kind is p.POSITIONAL_OR_KEYWORD]
    task_signature = signature.replace(
        parameters=[inspect.Parameter("artifacts_dir", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=str),
                    *inputs],
        return_annotation=ref_type(name))
    cache = StageCache(stage=name, module=compute.__module__, describe_inputs=describe_inputs, files=tuple(files),
                       libraries=tuple(libraries))
    tries = settings()

    def run(*args: Any, **kwargs: Any) -> EntryRef:
        arguments = task_signature.bind(*args, **kwargs)
        arguments.apply_defaults()
        inputs = dict(arguments.arguments)
        return cache.produce(compute, inputs.pop("artifacts_dir"), inputs)

    run.__signature__ = task_signature  # type: ignore[attr-defined]
    run.__name__ = run.__qualname__ = compute.__name__
    run.__doc__ = compute.__doc__
    return task(
        run,
        cache_policy=cache,
        persist_result=True,
        # JSON, not pickle: reading a result back never runs code from the store.
        result_serializer="json",
        # Short on purpose (settings.py): a stage that keeps failing ends the run within a minute.
        retries=tries.stage_retries,
        retry_delay_seconds=tries.retry_delays_s,
        retry_jitter_factor=tries.retry_jitter,
        retry_condition_fn=retries.worth_retrying,
    )


def _check_lock() -> None:
    """TransientError when this task run's lock on its entry expired (its process was stopped past the lock's
    time to live) and so another run may be writing the entry: this one stops, and its retry waits for that
    run's lock, then is served the entry it published."""
    transaction = get_transaction()
    if transaction is not None and transaction.store is not None and locking.lost(transaction.store.lock_manager,
                                                                                  transaction.key):
        entry = transaction.key.removesuffix(f"/{RECORD}")
        raise retries.TransientError(f"the lock on {entry} expired while this run was stopped, and another run "
                                     "took over that entry: this run stopped writing to it; run again to be "
                                     "served its result")


def _served(store: ArtifactStore, stage: str, fingerprint: str) -> EntryRef:
    """The reference of an intact entry; a store in S3 first uploads it if the bucket lacks it, so every host
    is served it (the run is served all the same if the upload fails)."""
    try:
        if store.share(stage, fingerprint):
            run_logger().info("Uploaded the %s entry %s to %s, which lacked it", stage, fingerprint, store.identity)
    except Exception as error:  # s3fs, botocore and the network raise their own kinds
        run_logger().warning("The %s entry %s may be missing from %s, and could not be uploaded: %s", stage,
                             fingerprint, store.identity, (str(error).strip() or type(error).__name__).splitlines()[0])
    return store.load_ref(stage, fingerprint)


def _fingerprint_of_this_task_run(stage: str) -> Optional[str]:
    transaction = get_transaction()
    match = _RECORD_KEY.match(transaction.key or "") if transaction is not None else None
    return match[2] if match is not None and match[1] == stage else None


def _progress_artifact(stage: str) -> Callable[[float], None]:
    """Percent done, as an artifact the UI shows live; made at the first report, so it never goes backwards.
    A task run named `stage[label]` (one of a sweep's) has its label in the artifact's key and description."""
    context = TaskRunContext.get()
    if context is None:  # called outside a task run: nobody to show it to
        return lambda percent: None
    from prefect.artifacts import create_progress_artifact, update_progress_artifact

    label = re.search(r"\[(.+)\]$", context.task_run.name)
    key = f"{stage}-progress" + (f"-{re.sub(r'[^a-z0-9]+', '-', label[1].lower()).strip('-')}" if label else "")
    made: list[Any] = []

    def report(percent: float) -> None:
        if not made:
            made.append(create_progress_artifact(progress=round(percent, 1), key=key, description=(
                f"Share of the {stage} stage done" + (f": {label[1]}" if label else ""))))
        else:
            update_progress_artifact(artifact_id=made[0], progress=round(percent, 1))

    return report


_RECORD_KEY = re.compile(rf"^([a-z]+)/([0-9a-f]{{16}})/{re.escape(RECORD)}$")


class EntryRecords(LocalFileSystem):
    """Prefect's result storage for the stages: each record is made from its verified entry, never read from disk.

    Prefect deserializes a record with whatever serializer it names (pickle, a class to import). Here a
    record's key reads as its entry's `ref.json`, typed, while the entry matches its manifest, else as
    absent, so Prefect runs the stage again; Prefect's writes are dropped: the entry is the record.
    """

    _block_type_name = "mnist-pipeline entry records"

    def read_path(self, path: str, _sync: Optional[bool] = None) -> bytes:
        from prefect.results import ResultRecord, ResultRecordMetadata
        from prefect.serializers import JSONSerializer

        match = _RECORD_KEY.match(path)
        if match is None or match[1] not in stages():
            raise ValueError(f"{path} is not a stage's record")
        store = ArtifactStore(self.basepath)
        problem = store.problem(match[1], match[2])
        if problem is not None:
            raise ValueError(f"{path} is not served: {problem}")
        ref = _served(store, match[1], match[2])
        metadata = ResultRecordMetadata(storage_key=str(store.entry(ref.stage, ref.fingerprint) / RECORD),
                                        serializer=JSONSerializer())
        return ResultRecord(result=ref, metadata=metadata).serialize()

    async def aread_path(self, path: str) -> bytes:
        return self.read_path(path)

    def write_path(self, path: str, content: bytes, _sync: Optional[bool] = None) -> str:
        return str(Path(self.basepath) / path)

    async def awrite_path(self, path: str, content: bytes) -> str:
        return self.write_path(path, content)


def run_logger() -> Union[logging.Logger, logging.LoggerAdapter]:
    """Prefect's run logger inside a task run (the UI shows it), else a plain logger."""
    return get_run_logger() if TaskRunContext.get() else log
