"""What the store holds, what each entry is kept for, and the clean-up (`mnist-pipeline store` and `gc`).

Every path under the store is one row: an entry, a leftover (a temporary,
evicted or fetched folder, a checkpoint), a run's report, or the store's own
files (run log, champions, locks, TensorFlow Datasets' downloads). Sizes are
the blocks allocated on disk, as `du` counts them.

An entry is kept when a champion depends on it (its run's entries, from the
run log; its model at least) or when one of the last `keep_runs` runs of a
dataset used it. `gc` removes the other entries, each under its stage's cache
lock (an entry being computed or served right now is skipped), and the
leftovers whose stage is not at work on them.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any, Iterator, Optional

from tasks.engine import layout, locking, runlog
from tasks.engine.refs import REF_TYPES
from tasks.engine.store import ArtifactStore

# Folders a store may hold at its top, besides the stages': anything else means it is not a store.
_OWN = {layout.TFDS, layout.LOCKS, layout.RUNS, layout.CHAMPIONS, layout.RUN_LOG, "README.md", ".remote"}
_LEFTOVER = (".tmp-", ".evicted-", ".fetch-")


class NotAStore(ValueError):
    """The folder holds something a store never does: gc refuses to touch it."""


def allocated(path: Path) -> int:
    """Bytes on disk under `path`, links not followed (each counted as itself), as `du` does.

    What a run removes meanwhile (a temporary folder renamed into place) counts as nothing.
    """
    try:
        total = path.lstat().st_blocks * 512
    except FileNotFoundError:
        return 0
    if path.is_dir() and not path.is_symlink():
        for parent, dirs, files in os.walk(path):
            for name in dirs + files:
                try:
                    total += os.lstat(os.path.join(parent, name)).st_blocks * 512
                except FileNotFoundError:
                    pass
    return total


def _rows(root: Path) -> Iterator[dict[str, Any]]:
    # The folders themselves: a block each, which `du` counts too.
    yield {"kind": "store", "stage": "", "fingerprint": "", "path": root, "folder_only": True}
    for top in sorted(root.iterdir()):
        if top.name in REF_TYPES and top.is_dir() and not top.is_symlink():
            yield {"kind": "store", "stage": top.name, "fingerprint": "", "path": top, "folder_only": True}
            for item in sorted(top.iterdir()):
                if item.name == layout.WORK and item.is_dir() and not item.is_symlink():
                    yield {"kind": "store", "stage": top.name, "fingerprint": "", "path": item, "folder_only": True}
                    for work in sorted(item.iterdir()):
                        yield {"kind": "checkpoint", "stage": top.name, "fingerprint": work.name, "path": work}
                    continue
                leftover = item.name.startswith(_LEFTOVER)
                fingerprint = item.name.split("-")[1] if leftover and item.name.count("-") >= 2 else item.name
                yield {"kind": "leftover" if leftover else "entry", "stage": top.name, "fingerprint": fingerprint,
                       "path": item}
        elif top.name == layout.RUNS and top.is_dir() and not top.is_symlink():
            yield {"kind": "store", "stage": "", "fingerprint": "", "path": top, "folder_only": True}
            for run in sorted(top.iterdir()):
                yield {"kind": "run report", "stage": "", "fingerprint": "", "flow_run_id": run.name, "path": run}
        else:
            yield {"kind": "store", "stage": "", "fingerprint": "", "path": top}


def check(root: Path) -> None:
    """Refuse a folder that is not an artifact store, before anything in it is touched."""
    if not root.is_dir() or root.is_symlink():
        raise NotAStore(f"{root} is not a folder")
    foreign = sorted(p.name for p in root.iterdir() if p.name not in _OWN and p.name not in REF_TYPES
                     and not p.name.startswith(".probe-"))
    if foreign:
        raise NotAStore(f"{root} does not look like an artifact store: it holds {', '.join(foreign[:5])}")


def inventory(root: Path, keep_runs: int = 5) -> Any:
    """One row per path under the store: kind, stage, fingerprint, bytes, age, last run, what keeps it."""
    import pandas as pd

    check(root)
    runs = runlog.read(str(root))
    used: dict[str, dict[str, Any]] = {}
    kept_by_runs: set[str] = set()
    for _, run in runs.iterrows():  # oldest first: the last run that used an entry wins
        for entry in _entries(run):
            used[entry] = {"last_run": run["flow_run_id"], "last_used": run["finished"]}
    for _, recent in runs.groupby("dataset", sort=False).tail(keep_runs).iterrows():
        kept_by_runs.update(_entries(recent))
    champions = _champion_lineages(root, runs)
    now = time.time()
    rows = []
    for row in _rows(root):
        path = row["path"]
        name = f"{row['stage']}/{row['fingerprint']}"
        try:
            stat = path.lstat()
        except FileNotFoundError:  # gone while listed: a run at work
            continue
        row.update(bytes=stat.st_blocks * 512 if row.pop("folder_only", False) else allocated(path),
                   age_days=round((now - stat.st_mtime) / 86400, 2),
                   last_run=used.get(name, {}).get("last_run", ""),
                   champion=", ".join(sorted(d for d, lineage in champions.items() if name in lineage)),
                   recent_run=name in kept_by_runs)
        rows.append(row)
    table = pd.DataFrame(rows, columns=["kind", "stage", "fingerprint", "bytes", "age_days", "last_run", "champion",
                                        "recent_run", "flow_run_id", "path"])
    return table


def _entries(run: Any) -> list[str]:
    entries = run.get("entries")
    return list(entries.values()) if isinstance(entries, dict) else []


def _champion_lineages(root: Path, runs: Any) -> dict[str, set[str]]:
    """Each dataset's champion: the entries of the run that promoted it, its model at least."""
    lineages = {}
    for record in sorted((root / layout.CHAMPIONS).glob("*.json")) if (root / layout.CHAMPIONS).is_dir() else []:
        try:
            champion = json.loads(record.read_text())
        except (OSError, ValueError):
            continue  # a damaged record: its entries are not protected by it, and `predict` reports it
        lineage = {champion.get("model_path") or f"train/{champion.get('model', '')}"}
        promoted = runs[runs["flow_run_id"] == champion.get("flow_run_id")]
        for _, run in promoted.iterrows():
            lineage.update(_entries(run))
        lineages[record.stem] = lineage
    return lineages


def plan(table: Any, older_than_days: Optional[float] = None) -> Any:
    """The rows `gc` removes: entries kept by no champion and no recent run, leftovers, old run reports."""
    entry = table["kind"] == "entry"
    unneeded = entry & (table["champion"] == "") & ~table["recent_run"].astype(bool)
    leftovers = table["kind"].isin(["leftover", "checkpoint"])
    doomed = unneeded | leftovers
    if older_than_days is not None:
        doomed &= table["age_days"] >= older_than_days
    return table[doomed]


class RunsInProgress(RuntimeError):
    """A run is in progress: its entries are not in the run log yet, so nothing may go."""


def collect(root: Path, doomed: Any, locks: Any) -> tuple[int, list[str]]:
    """Remove the planned rows, each under its stage's cache lock; returns bytes freed and what was skipped.

    Only while no run is in progress (the store's lock, held exclusively): a run
    records its entries when it ends, so until then they look unneeded. Runs
    that start meanwhile wait. Raises RunsInProgress, having removed nothing.
    A store in S3 is pruned in this host's copy only: the bucket serves hosts
    whose runs this host's run log does not know.
    """
    from tasks.engine.caching import record_key

    store, freed, skipped, holder = ArtifactStore(root), 0, [], f"gc-{os.getpid()}"
    with locking.store_exclusively(locks, store.identity) as alone:
        if not alone:
            raise RunsInProgress("a run is in progress in this store: gc removes nothing until it ends")
        for _, row in doomed.iterrows():
            key = record_key(row["stage"], row["fingerprint"])
            if not locks.acquire_lock(key, holder, acquire_timeout=0):
                skipped.append(f"{row['path']} (in use by a run)")
                continue
            try:
                path = Path(row["path"])
                if row["kind"] == "entry":
                    store.evict(row["stage"], row["fingerprint"], remote=False)
                elif path.is_symlink():
                    path.unlink()  # the link, never its target
                else:
                    shutil.rmtree(path, ignore_errors=True)
                freed += int(row["bytes"])
            finally:
                locks.release_lock(key, holder)
    return freed, skipped


def clean(root: Path, keep_runs: int, older_than_days: Optional[float] = None,
          remove: bool = True) -> tuple[Any, dict[str, Any]]:
    """`gc`: the rows plan() picks for the policy and, if `remove`, their removal by collect().

    Returns those rows and the summary: how many were removed and skipped, the
    bytes freed, the bytes the store holds after, and `in_use`, each skipped
    path and why. While a run is in progress nothing goes: every row counts as
    skipped, and `runs_in_progress` says why.
    """
    table = inventory(root, keep_runs=keep_runs)
    doomed = plan(table, older_than_days)
    summary = {"removed": 0, "skipped": 0, "freed_bytes": 0, "store_bytes": int(table["bytes"].sum()), "in_use": []}
    if not remove:
        return doomed, summary
    try:
        freed, skipped = collect(root, doomed, locking.lock_manager(root / layout.LOCKS))
    except RunsInProgress as error:
        return doomed, {**summary, "skipped": len(doomed), "runs_in_progress": str(error)}
    return doomed, {"removed": len(doomed) - len(skipped), "skipped": len(skipped), "freed_bytes": freed,
                    "store_bytes": summary["store_bytes"] - freed, "in_use": skipped}
