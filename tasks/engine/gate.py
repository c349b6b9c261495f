"""The quality gate: a run's model becomes its dataset's champion only if good enough.

As TFX's Evaluator blesses a model: the candidate must reach the accuracy
threshold, and must not fall behind the current champion by more than the
tolerance. The champion record lives in the artifact store,
`champions/<dataset>.json`, written atomically.
"""

from __future__ import annotations

import fcntl
import logging
import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Iterator, Optional

from prefect import task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tasks.engine import layout
from tasks.engine.refs import Fingerprint, MetricsRef, ModelRef
from tasks.engine.store import ArtifactStore, write_atomically

# How far below the champion's accuracy a new model may land and still replace it.
TOLERANCE = 0.005

log = logging.getLogger(__name__)


class GateResult(BaseModel):
    passed: bool
    champion_accuracy: Optional[float]
    reason: str


class Champion(BaseModel):
    """A dataset's champion: which train entry holds its model, and how well it scored."""

    model_config = ConfigDict(extra="ignore")

    model: Fingerprint
    test_accuracy: Annotated[float, Field(ge=0, le=1, strict=True)]
    flow_run_id: str
    # The model's entry relative to the store, so a moved store still finds it.
    model_path: str = ""


class ChampionDamaged(ValueError):
    """A champion record that cannot be read: reported, kept as evidence, never trusted."""


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
    return layout.champion(artifacts_dir, dataset)


def read_champion(artifacts_dir: str, dataset: str) -> Optional[Champion]:
    """The dataset's champion, None if there is none; ChampionDamaged if its record is unreadable."""
    path = champion_path(artifacts_dir, dataset)
    try:
        return Champion.model_validate_json(path.read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, ValidationError) as err:
        reason = str(err).splitlines()[0] if isinstance(err, OSError) else err.errors()[0]["msg"]
        raise ChampionDamaged(f"the {dataset} champion record {path} is damaged ({reason})") from err


def champion_model(artifacts_dir: str, dataset: str) -> Path:
    """The champion's model file, once its train entry has been verified."""
    champion = read_champion(artifacts_dir, dataset)
    if champion is None:
        raise FileNotFoundError(
            f"no {dataset} champion in {artifacts_dir}: no run has passed the quality gate yet "
            "(see `mnist-pipeline runs`); pass --model PATH, or run with a lower --accuracy-threshold"
        )
    store = ArtifactStore(artifacts_dir)
    problem = store.problem("train", champion.model)
    if problem is not None:
        raise ChampionDamaged(f"the {dataset} champion's model cannot be trusted: {problem}")
    return store.load_ref("train", champion.model).at(store.root).model_file


@task(cache_policy=NO_CACHE)
def gate_model(artifacts_dir: str, dataset: str, metrics: MetricsRef, threshold: float) -> GateResult:
    """Judge the model against the threshold and the dataset's champion (hold `champion_lock`)."""
    try:
        champion = read_champion(artifacts_dir, dataset)
    except ChampionDamaged as damaged:
        log.warning("%s; judging as if there were no champion", damaged)
        champion = None
    return judge(metrics.test_accuracy, threshold, champion and champion.test_accuracy)


def promote(artifacts_dir: str, dataset: str, model: ModelRef, metrics: MetricsRef, flow_run_id: str) -> None:
    """Make the model the dataset's champion (hold `champion_lock`).

    The same model again (a cached rerun) leaves the record as it is. A damaged
    record is moved aside first, kept as evidence beside the new one.
    """
    path = champion_path(artifacts_dir, dataset)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        champion = read_champion(artifacts_dir, dataset)
    except ChampionDamaged:
        os.replace(path, path.with_name(f"{path.name}.damaged-{time.strftime('%Y%m%dT%H%M%S')}"))
        champion = None
    if champion is not None and champion.model == model.fingerprint:
        return
    record = Champion(model=model.fingerprint, test_accuracy=metrics.test_accuracy, flow_run_id=flow_run_id,
                      model_path=f"{model.stage}/{model.fingerprint}")
    write_atomically(path, record.model_dump_json(indent=1))


@contextmanager
def champion_lock(artifacts_dir: str, dataset: str) -> Iterator[None]:
    """Held from judging to promotion: two runs finishing together take turns."""
    path = champion_path(artifacts_dir, dataset).with_suffix(".lock")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, or its process dies
        yield
