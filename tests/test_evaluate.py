import json

import numpy as np
import pytest

from tasks import evaluate
from tasks.refs import MetricsRef
from engine.store import ArtifactStore
from tests.stages import run_stages


def test_score_on_known_logits():
    labels = np.array([0, 1, 2, 2])
    logits = np.full((4, 10), -5.0)
    logits[[0, 1, 2, 3], [0, 1, 2, 1]] = 5.0  # the last image is a 2 taken for a 1
    scores = evaluate.score(logits, labels)
    assert scores["test_accuracy"] == 0.75
    assert scores["confusion"].loc[2, 1] == 1 and scores["confusion"].loc[2, 2] == 1
    assert scores["confusion"].shape == (10, 10)
    per_class = scores["per_class"]
    assert len(per_class) == 10
    assert per_class.loc[1, "precision"] == 0.5 and per_class.loc[1, "recall"] == 1.0
    assert per_class.loc[2, "recall"] == 0.5
    assert list(scores["misclassified"]["index"]) == [3]
    assert list(scores["first_predictions"]["predicted"]) == [0, 1, 2, 1]


def test_loss_is_mean_cross_entropy_from_logits():
    logits = np.array([[2.0, 0.0, 0.0, 0, 0, 0, 0, 0, 0, 0]])
    expected = -np.log(np.exp(2.0) / (np.exp(2.0) + 9))
    assert evaluate.score(logits, np.array([0]))["test_loss"] == pytest.approx(expected)


def test_stage_scores_the_trained_model(tmp_path, mirror):
    store = str(tmp_path)
    refs = run_stages(store, mirror, upto="evaluate")
    entry = ArtifactStore(store).path(refs["metrics"])
    # 4 of the 100 test labels are deliberately wrong.
    assert 0.9 <= refs["metrics"].test_accuracy <= 0.96
    assert json.loads((entry / MetricsRef.METRICS).read_text())["test_loss"] == refs["metrics"].test_loss
    tables = refs["metrics"].at(store).tables()
    assert tables["confusion"].to_numpy().sum() == 100
    assert len(tables["first_predictions"]) == evaluate.FIRST_PREDICTIONS
    assert len(tables["misclassified"]) >= 4
