"""The quality gate: a run's model becomes its dataset's champion only if good enough.

As TFX's Evaluator blesses a model: the candidate must reach the accuracy
threshold, and must not fall behind the current champion by more than the
tolerance. The champion record lives in the artifact store,
`champions/<dataset>.json`, written atomically.
"""

from __future__ import annotations

import fcntl
import json
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

from prefect import task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel

from tasks.refs import MetricsRef, ModelRef
from tasks.store import write_atomically

CHAMPIONS = "champions"
# How far below the champion's accuracy a new model may land and still replace it.
TOLERANCE = 0.005


class GateResult(BaseModel):
    passed: bool
    champion_accuracy: Optional[float]
    reason: str


def judge(accuracy: float, threshold: float, champion_accuracy: Optional[float]) -> GateResult:
    """Whether a model of test accuracy `accuracy` may replace the champion, and why."""
    if accuracy < threshold:
        return GateResult(passed=False, champion_accuracy=champion_accuracy,
                          reason=f"test accuracy {accuracy:.4f} is under the threshold {threshold:.4f}")
    if champion_accuracy is not None and accuracy < champion_accuracy - TOLERANCE:
        return GateResult(passed=False, champion_accuracy=champion_accuracy,
                          reason=f"test accuracy {accuracy:.4f} is more than {TOLERANCE} under "
                                 f"the champion's {champion_accuracy:.4f}")
    return GateResult(passed=True, champion_accuracy=champion_accuracy,
                      reason=f"test accuracy {accuracy:.4f} reaches the threshold {threshold:.4f}"
                             + ("" if champion_accuracy is None else
                                f" and holds against the champion's {champion_accuracy:.4f}"))


def champion_path(artifacts_dir: str, dataset: str) -> Path:
    return Path(artifacts_dir) / CHAMPIONS / f"{dataset}.json"


def read_champion(artifacts_dir: str, dataset: str) -> Optional[dict]:
    path = champion_path(artifacts_dir, dataset)
    return json.loads(path.read_text()) if path.is_file() else None


def _write_champion(artifacts_dir: str, dataset: str, record: dict) -> None:
    path = champion_path(artifacts_dir, dataset)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, json.dumps(record, indent=1))


@task(cache_policy=NO_CACHE)
def gate_model(artifacts_dir: str, dataset: str, model: ModelRef, metrics: MetricsRef,
               threshold: float, flow_run_id: str) -> GateResult:
    """Promote the model to its dataset's champion if it passes the gate."""
    # Read, judge and write as one step: two runs finishing together take turns.
    with _champion_lock(artifacts_dir, dataset):
        champion = read_champion(artifacts_dir, dataset)
        result = judge(metrics.test_accuracy, threshold, champion and champion["test_accuracy"])
        if result.passed and (champion is None or champion["model"] != model.fingerprint):
            _write_champion(artifacts_dir, dataset, {
                "model": model.fingerprint,
                "model_path": str(Path(artifacts_dir).resolve() / model.stage / model.fingerprint),
                "test_accuracy": metrics.test_accuracy,
                "flow_run_id": flow_run_id,
            })
    return result


@contextmanager
def _champion_lock(artifacts_dir: str, dataset: str) -> Iterator[None]:
    path = champion_path(artifacts_dir, dataset).with_suffix(".lock")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, or its process dies
        yield
