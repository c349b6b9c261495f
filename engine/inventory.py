"""What the store holds, what each entry is kept for, and the clean-up (`mnist-pipeline store` and `gc`).

Every path under the store is one row: an entry, a leftover (a temporary,
evicted or fetched folder, a checkpoint), a run's report, the store's own
files, or something foreign (a name no entry or leftover can have), which gc
never touches. An entry is kept when a champion depends on it (its model's
lineage and the run that promoted it) or when one of the last `keep_runs`
runs of a dataset used it. gc never removes more than it can judge: what keeps
an entry that cannot be read makes it remove nothing.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from contextlib import nullcontext, suppress
from pathlib import Path
from typing import Any, Iterator, Optional

from engine import layout, locking, runlog
from engine.champions import ChampionDamaged, read_champion
from engine.refs import stages
from engine.store import ArtifactStore, StoreError

# What a manifest's inputs and a run log's entries name: `<stage>/<fingerprint>`.
_ENTRY_NAME = re.compile(r"[a-z]+/[0-9a-f]{16}")


class NotAStore(ValueError):
    """The folder holds something a store never does: gc refuses to touch it."""


class CannotJudge(ValueError):
    """Something gc needs to decide what a champion keeps cannot be read: gc removes nothing."""


def allocated(path: Path) -> int:
    """Bytes on disk under `path` as `du` counts them, a link as itself; what a run removes meanwhile as 0."""
    try:
        total = path.lstat().st_blocks * 512
    except FileNotFoundError:
        return 0
    if path.is_dir() and not path.is_symlink():
        for parent, dirs, files in os.walk(path):
            for name in dirs + files:
                with suppress(FileNotFoundError):
                    total += os.lstat(os.path.join(parent, name)).st_blocks * 512
    return total


def _row(kind: str, path: Path, stage: str = "", fingerprint: str = "", flow_run_id: str = "",
         **extra: Any) -> dict[str, Any]:
    return {"kind": kind, "stage": stage, "fingerprint": fingerprint, "flow_run_id": flow_run_id, "path": path,
            **extra}


def _stage_rows(top: Path) -> Iterator[dict[str, Any]]:
    stage = top.name
    yield _row("store", top, stage, folder_only=True)
    for item in sorted(top.iterdir()):
        if item.name == layout.WORK and item.is_dir() and not item.is_symlink():
            yield _row("store", item, stage, folder_only=True)
            for work in sorted(item.iterdir()):
                checkpoint = layout.ENTRY_NAME.fullmatch(work.name)
                yield _row("checkpoint" if checkpoint else "foreign", work, stage, work.name if checkpoint else "")
        elif layout.ENTRY_NAME.fullmatch(item.name):
            yield _row("entry", item, stage, item.name)
        elif leftover := layout.LEFTOVER_NAME.fullmatch(item.name):
            yield _row("leftover", item, stage, leftover[1])
        else:
            yield _row("foreign", item, stage)


def _rows(root: Path) -> Iterator[dict[str, Any]]:
    # The folders themselves: a block each, which `du` counts too.
    yield _row("store", root, folder_only=True)
    for top in sorted(root.iterdir()):
        if top.name in stages() and top.is_dir() and not top.is_symlink():
            yield from _stage_rows(top)
        elif top.name == layout.RUNS and top.is_dir() and not top.is_symlink():
            yield _row("store", top, folder_only=True)
            for run in sorted(top.iterdir()):
                # A name that is not UTF-8 (no run's is) kept printable: `\xff`.
                yield _row("run report", run, flow_run_id=os.fsencode(run.name).decode("utf-8", "backslashreplace"))
        else:
            yield _row("store", top)


def check(root: Path) -> None:
    """Refuse a folder that is not an artifact store, before anything in it is touched."""
    if not root.is_dir() or root.is_symlink():
        raise NotAStore(f"{root} is not a folder")
    foreign = sorted(p.name for p in root.iterdir() if p.name not in layout.OWN and p.name not in stages()
                     and not p.name.startswith(layout.PROBE))
    if foreign:
        raise NotAStore(f"{root} does not look like an artifact store: it holds {', '.join(foreign[:5])}")


def inventory(root: Path, keep_runs: int = 5, judged: bool = True) -> Any:
    """One row per path under the store: kind, stage, fingerprint, bytes, age, last run, what keeps it.

    CannotJudge when what keeps an entry cannot be read, unless not `judged`: then as if nothing kept any.
    """
    import pandas as pd

    check(root)
    try:
        runs = _run_log(root)
        champions = champion_lineages(root, runs)
    except CannotJudge:
        if judged:
            raise
        runs, champions = pd.DataFrame(columns=runlog.COLUMNS), {}
    # Oldest first: the last run that used an entry wins.
    used = {entry: run["flow_run_id"] for _, run in runs.iterrows() for entry in _entries(run)}
    names = {run["flow_run_id"]: runlog.run_name(run) for _, run in runs.iterrows()}
    recent = runs.groupby("dataset", sort=False).tail(keep_runs)
    kept_by_runs = {entry for _, run in recent.iterrows() for entry in _entries(run)}
    store, now = ArtifactStore(root), time.time()
    rows = []
    for row in _rows(root):
        path = row["path"]
        name = f"{row['stage']}/{row['fingerprint']}"
        try:
            stat = path.lstat()
        except FileNotFoundError:  # gone while listed: a run at work
            continue
        row.update(bytes=stat.st_blocks * 512 if row.pop("folder_only", False) else allocated(path),
                   age_days=round((now - stat.st_mtime) / 86400, 2), last_run=used.get(name, ""),
                   last_run_name=names.get(used.get(name), ""),
                   champion=", ".join(sorted(d for d, lineage in champions.items() if name in lineage)),
                   recent_run=name in kept_by_runs,
                   # In this host's copy of a store in S3, but not in the bucket: no other host can be served it.
                   local_only=row["kind"] == "entry" and store.remote is not None
                   and not store.in_bucket(row["stage"], row["fingerprint"]))
        rows.append(row)
    return pd.DataFrame(rows, columns=["kind", "stage", "fingerprint", "bytes", "age_days", "last_run",
                                       "last_run_name", "champion", "recent_run", "local_only", "flow_run_id",
                                       "path"])


def _entries(run: Any) -> list[str]:
    entries = run.get("entries")
    return list(entries.values()) if isinstance(entries, dict) else []


def lineage(root: Path, stage: str, fingerprint: str) -> set[str]:
    """`<stage>/<fingerprint>` and every entry it was computed from, as their manifests name them."""
    seen, todo = set(), [f"{stage}/{fingerprint}"]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            inputs = json.loads((root / name / layout.MANIFEST).read_text()).get("inputs", [])
        except (OSError, ValueError, AttributeError):
            continue  # missing or unreadable: nothing more to follow from it
        if isinstance(inputs, list):
            todo.extend(i for i in inputs if isinstance(i, str) and _ENTRY_NAME.fullmatch(i))
    return seen


def _run_log(root: Path) -> Any:
    """The run log as a table; CannotJudge when it is there but cannot be read as a file."""
    path = root / layout.RUN_LOG
    if os.path.lexists(path) and not path.is_file():
        raise CannotJudge(f"the run log {path} is not a file that can be read; gc removes nothing until it is")
    return runlog.read(str(root))


def champion_lineages(root: Path, runs: Any) -> dict[str, set[str]]:
    """Each dataset's champion: its model's lineage, and the entries of the run that promoted it; else CannotJudge."""
    folder = root / layout.CHAMPIONS
    try:
        records = sorted(p for p in folder.iterdir() if p.name.endswith(".json")) if os.path.lexists(folder) else []
    except OSError as error:  # not a folder, a link to nothing, not readable
        raise CannotJudge(f"the champion records in {folder} cannot be listed ({error.strerror or error}); "
                          "gc removes nothing until they can") from None
    lineages = {}
    for record in records:
        try:
            champion = read_champion(root, record.stem)
            if champion is None and os.path.lexists(record):  # a link to nothing: an offline disk, say
                raise ChampionDamaged(f"the {record.stem} champion record {record} cannot be opened")
        except ChampionDamaged as damaged:
            raise CannotJudge(f"{damaged}; gc removes nothing until it is repaired or moved aside") from None
        if champion is None:  # removed a moment ago
            continue
        # The model's entry, wherever the record says it is: the stage folder that holds its fingerprint.
        kept = set().union(*(lineage(root, stage, champion.model) for stage in stages()
                             if (root / stage / champion.model).is_dir()))
        for _, run in runs[runs["flow_run_id"] == champion.flow_run_id].iterrows():
            kept.update(_entries(run))
        lineages[record.stem] = kept
    return lineages


def plan(table: Any, older_than_days: Optional[float] = None) -> Any:
    """The rows `gc` removes: entries kept by no champion and no recent run, and leftovers."""
    doomed = (table["kind"] == "entry") & (table["champion"] == "") & ~table["recent_run"].astype(bool)
    doomed |= table["kind"].isin(["leftover", "checkpoint"])
    if older_than_days is not None:
        doomed &= table["age_days"] >= older_than_days
    return table[doomed]


class RunsInProgress(RuntimeError):
    """A run is in progress: its entries are not in the run log yet, so nothing may go."""


def _remove(path: Path) -> Optional[str]:
    """Remove `path` (a link as a link, never its target); None, or why it is still there."""
    problems: list[str] = []
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, onerror=lambda function, name, error: problems.append(
                f"{error[1].strerror or error[1]}: {name}"))
        else:
            path.unlink()
    except FileNotFoundError:
        return None
    except OSError as error:
        return error.strerror or str(error)
    return (problems or ["still there"])[0] if os.path.lexists(path) else None


def collect(root: Path, doomed: Any, locks: Any) -> tuple[int, list[str]]:
    """Remove the planned rows, each under its stage's cache lock; returns bytes freed and what was skipped, why.

    The caller holds the store exclusively. A store in S3 is pruned in this host's copy only: the bucket
    serves hosts whose runs this host's run log does not know.
    """
    store, freed, skipped, holder = ArtifactStore(root), 0, [], f"gc-{os.getpid()}"
    for _, row in doomed.iterrows():
        key = layout.record_key(row["stage"], row["fingerprint"])
        if not locks.acquire_lock(key, holder, acquire_timeout=0):
            skipped.append(f"{row['path']} (in use by a run)")
            continue
        try:
            if row["kind"] == "entry":  # out of sight first, then from disk
                left = store.evict(row["stage"], row["fingerprint"], remote=False)
                problem = f"part of it is left in {left.name}, for the next gc" if left else None
            else:
                problem = _remove(Path(row["path"]))
        except (OSError, StoreError) as error:  # a read-only disk, an immutable folder
            problem = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
        finally:
            locks.release_lock(key, holder)
        if problem:
            skipped.append(f"{row['path']} (cannot be removed: {problem})")
        else:
            freed += int(row["bytes"])
    return freed, skipped


def clean(root: Path, keep_runs: int, older_than_days: Optional[float] = None,
          remove: bool = True) -> tuple[Any, dict[str, Any]]:
    """`gc`: the rows plan() picks for the policy and, if `remove`, their removal by collect().

    Returns those rows and the summary (removed, skipped, freed_bytes,
    store_bytes after, skipped_paths with why). The store is taken exclusively
    before anything is read, so a run cannot promote a model between the plan
    and the removal; RunsInProgress while one is in progress, CannotJudge when
    a champion record cannot be read. A dry run takes no lock and writes nothing.
    """
    check(root)
    locks = locking.lock_manager(root / layout.LOCKS) if remove else None
    guard = locking.store_exclusively(locks, ArtifactStore(root).identity) if remove else nullcontext(True)
    with guard as alone:
        if not alone:
            raise RunsInProgress("a run (or another gc) is in progress in this store: gc removes nothing until it "
                                 "ends")
        table = inventory(root, keep_runs=keep_runs)
        doomed = plan(table, older_than_days)
        freed, skipped = collect(root, doomed, locks) if remove else (0, [])
    return doomed, {"removed": len(doomed) - len(skipped) if remove else 0, "skipped": len(skipped),
                    "freed_bytes": freed, "store_bytes": int(table["bytes"].sum()) - freed, "skipped_paths": skipped}
