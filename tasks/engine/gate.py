"""The quality gate: a run's model becomes its dataset's champion only if good enough.

As TFX's Evaluator blesses a model: the candidate must reach the accuracy
threshold, and must not fall more than the tolerance below the best test
accuracy ever promoted on the same test data (by SHA-256). Accuracies measured
on other test data are never compared: such a run is judged against the
threshold alone, and its verdict says so. The bar never falls, so a chain of
promotions cannot drift down. The champion record lives in the artifact store,
`champions/<dataset>.json`, written atomically.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Annotated, Any, ContextManager, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tasks.engine import layout
from tasks.engine.locking import held
from tasks.engine.refs import Fingerprint, MetricsRef, ModelRef
from tasks.engine.store import ArtifactStore, write_atomically

# How far below the champion's accuracy a new model may land and still replace it.
TOLERANCE = 0.005

log = logging.getLogger(__name__)


class GateResult(BaseModel):
    passed: bool
    # The bar the run was held to: the best test accuracy promoted on the same test data, if any.
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
    # SHA-256 of the test split its accuracy was measured on (None in records from before it was kept).
    test_sha256: Optional[str] = None
    # The best test accuracy ever promoted, per test data (by SHA-256): the bar, which never falls.
    best: dict[str, Annotated[float, Field(ge=0, le=1, strict=True)]] = {}

    def bar(self, test_sha256: str) -> Optional[float]:
        """The best accuracy promoted on this test data, None if none was measured on it."""
        found = [self.best.get(test_sha256), self.test_accuracy if self.test_sha256 == test_sha256 else None]
        return max((a for a in found if a is not None), default=None)


class ChampionDamaged(ValueError):
    """A champion record that cannot be read: reported, kept as evidence, never trusted."""


def judge(accuracy: float, threshold: float, bar: Optional[float], other_data: bool = False) -> GateResult:
    """Whether a model of test accuracy `accuracy` may become the champion, and why.

    `bar` is the best accuracy promoted on the same test data; `other_data`
    says the current champion was measured on other test data.
    """
    if accuracy < threshold:
        return GateResult(passed=False, champion_accuracy=bar,
                          reason=f"test accuracy {accuracy:.4f} is under the threshold {threshold:.4f}")
    if bar is not None and accuracy < bar - TOLERANCE:
        return GateResult(passed=False, champion_accuracy=bar,
                          reason=f"test accuracy {accuracy:.4f} is more than {TOLERANCE} under {bar:.4f}, "
                                 "the best promoted on the same test data")
    if bar is not None:
        against = f" and holds against {bar:.4f}, the best promoted on the same test data"
    elif other_data:
        against = ("; the champion was measured on other test data, so it was judged against the threshold "
                   "alone")
    else:
        against = ""
    return GateResult(passed=True, champion_accuracy=bar,
                      reason=f"test accuracy {accuracy:.4f} reaches the threshold {threshold:.4f}{against}")


def read_champion(artifacts_dir: str, dataset: str) -> Optional[Champion]:
    """The dataset's champion, None if there is none; ChampionDamaged if its record is unreadable."""
    path = layout.champion(artifacts_dir, dataset)
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


def gate_model(artifacts_dir: str, dataset: str, metrics: MetricsRef, threshold: float) -> GateResult:
    """Judge the model against the threshold and the dataset's champion (hold `champion_lock`)."""
    try:
        champion = read_champion(artifacts_dir, dataset)
    except ChampionDamaged as damaged:
        log.warning("%s; judging as if there were no champion", damaged)
        champion = None
    return judge(metrics.test_accuracy, threshold, champion.bar(metrics.test_sha256) if champion else None,
                 other_data=champion is not None and champion.test_sha256 != metrics.test_sha256)


def promote(artifacts_dir: str, dataset: str, model: ModelRef, metrics: MetricsRef, flow_run_id: str) -> None:
    """Make the model the dataset's champion (hold `champion_lock`).

    The same model again (a cached rerun) leaves the record as it is. A damaged
    record is moved aside first, kept as evidence beside the new one.
    """
    path = layout.champion(artifacts_dir, dataset)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        champion = read_champion(artifacts_dir, dataset)
    except ChampionDamaged:
        os.replace(path, path.with_name(f"{path.name}.damaged-{time.strftime('%Y%m%dT%H%M%S')}"))
        champion = None
    if champion is not None and champion.model == model.fingerprint:
        return
    best = dict(champion.best) if champion is not None else {}
    if champion is not None and champion.test_sha256 is not None:
        best[champion.test_sha256] = champion.bar(champion.test_sha256)
    best[metrics.test_sha256] = max(best.get(metrics.test_sha256, 0.0), metrics.test_accuracy)
    record = Champion(model=model.fingerprint, test_accuracy=metrics.test_accuracy, flow_run_id=flow_run_id,
                      model_path=f"{model.stage}/{model.fingerprint}", test_sha256=metrics.test_sha256, best=best)
    write_atomically(path, record.model_dump_json(indent=1))


def champion_lock(locks: Any, dataset: str) -> ContextManager[None]:
    """Held from judging to promotion: two runs finishing together take turns."""
    return held(locks, f"champion/{dataset}")
