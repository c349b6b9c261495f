"""The quality gate, as TFX's Evaluator blesses a model: it must reach the threshold, and not fall more than
TOLERANCE below the best test accuracy ever promoted on the same test data (by SHA-256), so a chain of promotions
cannot drift down. Accuracies measured on other test data are never compared.
"""

from __future__ import annotations

import logging
from typing import Optional

from pydantic import BaseModel

from engine.champions import Champion, ChampionDamaged, read_champion, read_for_update, write_champion
from tasks.refs import MetricsRef, ModelRef

# How far below the champion's accuracy a new model may land and still replace it.
TOLERANCE = 0.005

log = logging.getLogger(__name__)


class GateResult(BaseModel):
    passed: bool
    # The bar the run was held to: the best test accuracy promoted on the same test data, if any.
    champion_accuracy: Optional[float]
    reason: str


def judge(accuracy: float, threshold: float, bar: Optional[float], other_data: bool = False) -> GateResult:
    """Whether a model may become the champion, and why; `bar`: the best accuracy promoted on the same test data,
    `other_data`: the champion was measured on other test data."""
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
        against = "; the champion was measured on other test data, so it was judged against the threshold alone"
    else:
        against = ""
    return GateResult(passed=True, champion_accuracy=bar,
                      reason=f"test accuracy {accuracy:.4f} reaches the threshold {threshold:.4f}{against}")


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
    """Make the model the dataset's champion (hold `champion_lock`); the same model again leaves the record as it is,
    and a damaged record is kept as evidence beside the new one."""
    champion = read_for_update(artifacts_dir, dataset)
    if champion is not None and champion.model == model.fingerprint:
        return
    best = dict(champion.best) if champion is not None else {}
    if champion is not None and champion.test_sha256 is not None:
        best[champion.test_sha256] = champion.bar(champion.test_sha256)
    best[metrics.test_sha256] = max(best.get(metrics.test_sha256, 0.0), metrics.test_accuracy)
    write_champion(artifacts_dir, dataset, Champion(
        model=model.fingerprint, test_accuracy=metrics.test_accuracy, flow_run_id=flow_run_id,
        model_path=model.name, test_sha256=metrics.test_sha256, best=best))
