"""The artifact store's folder layout, in one place.

    <store>/
      <stage>/<fingerprint>/         a stage's entry: its files, ref.json, and manifest.json, written last
      <stage>/.tmp-<fingerprint>-*   an entry being written, never served
      <stage>/.evicted-*             an entry on its way out
      <stage>/.work/<fingerprint>/   what a stage keeps between attempts (training's checkpoints)
      tfds/                          TensorFlow Datasets' downloads and prepared records
      .locks/                        the stages' cache locks
      runs/<flow run id>/            each run's report
      runs.jsonl                     the run log
      champions/<dataset>.json       each dataset's champion
      .remote                        in the local copy of a store in S3: the bucket's URL (remote.py)
      <stage>/.fetch-<fingerprint>-* an entry being fetched from the bucket, never served
"""

from __future__ import annotations

from pathlib import Path
from typing import Union

# Part of every stage's key. Bump it when a change here or in the store's
# machinery leaves existing entries unreadable: every stage computes afresh.
STORE_VERSION = 3

MANIFEST = "manifest.json"
# Where Prefect looks for a stage's record: inside its entry (tasks/engine/caching.py).
RECORD = "result.json"
REF = "ref.json"
WORK = ".work"
TFDS = "tfds"
LOCKS = ".locks"
RUNS = "runs"
RUN_LOG = "runs.jsonl"
CHAMPIONS = "champions"

Root = Union[str, Path]


def record_key(stage: str, fingerprint: str) -> str:
    """Prefect's key for a stage's record; also the key of its cache lock."""
    return f"{stage}/{fingerprint}/{RECORD}"


def entry(root: Root, stage: str, fingerprint: str) -> Path:
    return Path(root) / stage / fingerprint


def work(root: Root, stage: str, fingerprint: str) -> Path:
    return Path(root) / stage / WORK / fingerprint


def run_folder(root: Root, flow_run_id: str) -> Path:
    return Path(root) / RUNS / flow_run_id


def champion(root: Root, dataset: str) -> Path:
    return Path(root) / CHAMPIONS / f"{dataset}.json"
