"""The log of finished runs in the artifact store (`runs.jsonl`), one JSON line each."""

from __future__ import annotations

import json
import logging
import os
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Callable, Iterator, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from engine.layout import RUN_LOG
from engine.locking import held
from engine.store import raise_if_full
from engine.text import shown

if TYPE_CHECKING:
    import pandas as pd

# The columns `mnist-pipeline runs --all` shows, in order (`runs` alone shows a few of them).
COLUMNS = ["finished", "run_name", "dataset", "test_data", "sizes", "epochs", "batch_size", "learning_rate",
           "lr_schedule", "train_limit", "validation_split", "seed", "validation_accuracy", "test_accuracy",
           "gate_passed", "gate_verdict", "gate_reason", "flow_run_id"]

log = logging.getLogger(__name__)


class _Line(BaseModel):
    """What a line must hold to count as a run; other fields pass through as they are."""

    model_config = ConfigDict(extra="allow")

    flow_run_id: str
    dataset: str = ""
    test_accuracy: Optional[Annotated[float, Field(ge=0, le=1, strict=True)]] = None
    # The entries it used, `<stage>/<fingerprint>`: what gc keeps for it (none in lines from before gc).
    entries: dict[str, Annotated[str, Field(pattern=r"^[a-z]+/[0-9a-f]{16}$")]] = {}


def append(artifacts_dir: str, record: dict[str, Any]) -> Callable[[], None]:
    """Add one run's line; returns what takes it back out (a truncation, which needs no space)."""
    path = Path(artifacts_dir) / RUN_LOG
    line = json.dumps(record, sort_keys=True, allow_nan=False) + "\n"
    # One write in append mode: concurrent runs never interleave inside a line.
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            line = "\n" + line  # the last line was cut short: start a fresh one
        data = line.encode()
        try:
            if os.write(fd, data) != len(data):
                raise OSError("a short write to the run log")
        except OSError as err:
            os.ftruncate(fd, size)
            raise_if_full(err, path.parent, str(path))
            raise
    finally:
        os.close(fd)
    return lambda: os.truncate(path, size)


@contextmanager
def added(artifacts_dir: str, record: dict[str, Any], locks: Any) -> Iterator[None]:
    """Add one run's line for the block, taken back out if the block fails.

    The run log's own lock (one for every dataset) is held throughout: no other
    run's line can follow this one until the block ends, so taking it back by
    truncation takes nothing else.
    """
    with held(locks, "run-log"):
        undo = append(artifacts_dir, record)
        try:
            yield
        except BaseException:
            undo()
            raise


def run_name(run: Any) -> str:
    """A run's name as the Prefect UI shows it ("crimson-fox"); for a line logged before names were, the first
    characters of its flow run id."""
    name = run.get("run_name")
    return name if isinstance(name, str) and name else str(run.get("flow_run_id") or "-")[:8]


def records(artifacts_dir: str) -> list[dict[str, Any]]:
    """Every logged run, oldest first, as dicts; a line that is not a run is skipped with a warning."""
    path = Path(artifacts_dir) / RUN_LOG
    runs = []
    for number, line in enumerate(path.read_text(errors="replace").splitlines() if path.is_file() else [], 1):
        try:
            run = _Line.model_validate_json(line).model_dump()
        except ValidationError as err:
            # A line cut short (a full disk, a crash) or altered: the others still count.
            log.warning("%s line %d is not a run record (%s); skipped", shown(path), number, err.errors()[0]["msg"])
            continue
        # Runs logged before the schedule was a setting trained at a constant rate.
        runs.append({**run, "lr_schedule": run.get("lr_schedule") or "constant"})
    return runs


def read(artifacts_dir: str) -> pd.DataFrame:
    """records() as a table, COLUMNS first."""
    import pandas as pd

    runs = records(artifacts_dir)
    runs = pd.DataFrame.from_records(runs) if runs else pd.DataFrame(columns=COLUMNS)
    return runs.reindex(columns=COLUMNS + [c for c in runs.columns if c not in COLUMNS])
