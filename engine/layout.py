"""The artifact store's names, in one place.

    <store>/
      <stage>/<fingerprint>/          a stage's entry: its files, ref.json, and manifest.json, written last
      <stage>/.tmp-<fingerprint>-*    an entry being written, never served
      <stage>/.fetch-<fingerprint>-*  an entry being fetched from the bucket, never served
      <stage>/.evicted-<fingerprint>-* an entry on its way out
      <stage>/.work/<fingerprint>/    what a stage keeps between attempts (training's checkpoints)
      tfds/                           downloads the stages keep between runs (TensorFlow Datasets')
      .locks/                         the locks: the stages' cache keys, store.lock, redis.url
      runs/<flow run id>/             each run's report
      runs.jsonl                      the run log
      champions/<dataset>.json        each dataset's champion
      .remote                         in the local copy of a store in S3: the bucket's URL (remote.py)
"""

from __future__ import annotations

import re
import uuid
from pathlib import Path
from typing import Union

# Part of every stage's key. Bump it when a change here or in the store's
# machinery leaves existing entries unreadable: every stage computes afresh.
STORE_VERSION = 4

MANIFEST = "manifest.json"
# Where Prefect looks for a stage's record: inside its entry (engine/caching.py).
RECORD = "result.json"
REF = "ref.json"
WORK = ".work"
DOWNLOADS = "tfds"
LOCKS = ".locks"
STORE_LOCK = "store.lock"
REDIS_RECORD = "redis.url"
RUNS = "runs"
RUN_LOG = "runs.jsonl"
CHAMPIONS = "champions"
# A champion record that could not be read, moved aside: `<dataset>.json.damaged-<time>`.
DAMAGED = ".damaged-"
REMOTE = ".remote"
README = "README.md"
# A run folder's sweep comparison.
SWEEP_TABLE, SWEEP_PLOT = "sweep.csv", "sweep.png"
# The store's own names at its top; anything else there besides the stages' folders is not a store's.
OWN = {DOWNLOADS, LOCKS, RUNS, RUN_LOG, CHAMPIONS, REMOTE, README}
# Folders being written, fetched or removed beside an entry, and the probe of a writable store.
TMP, FETCH, EVICTED, PROBE = ".tmp-", ".fetch-", ".evicted-", ".probe-"
ENTRY_NAME = re.compile(r"[0-9a-f]{16}")
LEFTOVER_NAME = re.compile(rf"(?:{TMP}|{FETCH}|{EVICTED})([0-9a-f]{{16}})-[0-9a-f]{{8}}")

Root = Union[str, Path]


def record_key(stage: str, fingerprint: str) -> str:
    """Prefect's key for a stage's record; also the key of its cache lock."""
    return f"{stage}/{fingerprint}/{RECORD}"


def entry(root: Root, stage: str, fingerprint: str) -> Path:
    return Path(root) / stage / fingerprint


def beside(entry: Path, prefix: str) -> Path:
    """A fresh name beside `entry` for a folder being written, fetched or removed: never an entry's."""
    return entry.with_name(f"{prefix}{entry.name}-{uuid.uuid4().hex[:8]}")


def work(root: Root, stage: str, fingerprint: str) -> Path:
    return Path(root) / stage / WORK / fingerprint


def run_folder(root: Root, flow_run_id: str) -> Path:
    return Path(root) / RUNS / flow_run_id


def champion(root: Root, dataset: str) -> Path:
    return Path(root) / CHAMPIONS / f"{dataset}.json"
