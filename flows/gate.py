"""The quality gate, as TFX's Evaluator blesses a model: it must reach the threshold, and beat the best test
accuracy ever promoted on the same test data (by SHA-256), so the champion only ever gets better; within TOLERANCE
of it is reported as a tie. Accuracies measured on other test data are never compared.
"""

from __future__ import annotations

import logging
from typing import Literal, Optional

from pydantic import BaseModel

from engine.champions import Champion, ChampionDamaged, read_champion, read_for_update, write_champion
from tasks.refs import MetricsRef, ModelRef

# How far below the best promoted accuracy a model is reported as a tie rather than as worse (neither replaces it).
TOLERANCE = 0.005
PROMOTED, ALREADY, NOT_PROMOTED = "promoted to champion", "already the champion", "not promoted"

log = logging.getLogger(__name__)


class GateResult(BaseModel):
    # The model is the champion after the gate: promoted now, or already.
    passed: bool
    # The bar the run was held to: the best test accuracy promoted on the same test data, if any.
    champion_accuracy: Optional[float]
    reason: str
    verdict: Literal["promoted to champion", "already the champion", "not promoted"]


def judge(accuracy: float, threshold: float, bar: Optional[float], other_data: bool = False,
          already: bool = False) -> GateResult:
    """Whether a model may become the champion, and why; `bar`: the best accuracy promoted on the same test data,
    `other_data`: the champion was measured on other test data, `already`: the model is the champion."""
    def refused(reason: str) -> GateResult:
        return GateResult(passed=False, champion_accuracy=bar, reason=reason, verdict=NOT_PROMOTED)

    if already:
        return GateResult(passed=True, champion_accuracy=bar, verdict=ALREADY,
                          reason=f"this model is the champion already, at test accuracy {accuracy:.4f}")
    if accuracy < threshold:
        return refused(f"test accuracy {accuracy:.4f} is under the threshold {threshold:.4f}")
    # Equal to the best on its test data takes the title back from a champion measured on other test data.
    if bar is not None and (accuracy < bar or accuracy == bar and not other_data):
        if accuracy >= bar - TOLERANCE:
            return refused(f"test accuracy {accuracy:.4f} ties with {bar:.4f}, the best promoted on the same test "
                           f"data (within {TOLERANCE}), and does not beat it: the champion stays")
        return refused(f"test accuracy {accuracy:.4f} is more than {TOLERANCE} under {bar:.4f}, "
                       "the best promoted on the same test data")
    if bar is not None:
        against = (f" and {'beats' if accuracy > bar else 'equals'} {bar:.4f}, the best promoted on the same test data"
                   + ("; the champion was measured on other test data" if other_data else ""))
    elif other_data:
        against = "; the champion was measured on other test data, so it was judged against the threshold alone"
    else:
        against = ""
    return GateResult(passed=True, champion_accuracy=bar, verdict=PROMOTED,
                      reason=f"test accuracy {accuracy:.4f} reaches the threshold {threshold:.4f}{against}")


def gate_model(artifacts_dir: str, dataset: str, model: ModelRef, metrics: MetricsRef, threshold: float) -> GateResult:
    """Judge the model against the threshold and the dataset's champion (hold `champion_lock`)."""
    try:
        champion = read_champion(artifacts_dir, dataset)
    except ChampionDamaged as damaged:
        log.warning("%s; judging as if there were no champion", damaged)
        champion = None
    return judge(metrics.test_accuracy, threshold, champion.bar(metrics.test_sha256) if champion else None,
                 other_data=champion is not None and champion.test_sha256 != metrics.test_sha256,
                 already=champion is not None and champion.model == model.fingerprint)


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
