"""The log of finished runs in the artifact store (`runs.jsonl`), one JSON line each."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pandas as pd

RUNS = "runs.jsonl"
# The columns `mnist-pipeline runs` shows, in order.
COLUMNS = ["finished", "dataset", "epochs", "batch_size", "learning_rate", "lr_schedule", "train_limit", "seed",
           "test_accuracy", "gate_passed", "gate_reason", "flow_run_id"]


def append(artifacts_dir: str, record: dict[str, Any]) -> None:
    line = json.dumps(record, sort_keys=True) + "\n"
    # One write in append mode: concurrent runs never interleave inside a line.
    fd = os.open(Path(artifacts_dir) / RUNS, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            line = "\n" + line  # the last line was cut short: start a fresh one
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def read(artifacts_dir: str) -> pd.DataFrame:
    """Every logged run, oldest first."""
    path = Path(artifacts_dir) / RUNS
    records = []
    for line in path.read_text().splitlines() if path.is_file() else []:
        try:
            records.append(json.loads(line))
        except ValueError:
            continue  # a line cut short (a full disk, a crash): the others still count
    runs = pd.DataFrame.from_records(records) if records else pd.DataFrame(columns=COLUMNS)
    runs = runs.reindex(columns=COLUMNS + [c for c in runs.columns if c not in COLUMNS])
    # Runs logged before the schedule was a setting trained at a constant rate.
    runs["lr_schedule"] = runs["lr_schedule"].astype(object).fillna("constant")
    return runs
