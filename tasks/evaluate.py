"""Stage 4: test loss and accuracy, the confusion matrix and per-class scores."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tasks import preprocess, train
from tasks.caching import StageCache, stage_task
from tasks.refs import MetricsRef, ModelRef, PreparedRef
from tasks.store import ArtifactStore

METRICS = "metrics.json"
CONFUSION = "confusion.csv"
PER_CLASS = "per_class.csv"
PREDICTIONS = "predictions.csv"
MISCLASSIFIED = "misclassified.csv"
# The tutorial prints the logits of test image 1 (`pre[1]`); keep the first few.
FIRST_PREDICTIONS = 10
_PREDICT_BATCH = 1024

CACHE = StageCache(stage="evaluate", module=__name__)


def log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def score(logits: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    """Every table the report shows, from the logits and the true labels."""
    log_probs = log_softmax(logits.astype(np.float64))
    predicted = logits.argmax(axis=1)
    classes = list(range(logits.shape[1]))
    truth = pd.Categorical(labels, categories=classes)
    guess = pd.Categorical(predicted, categories=classes)
    confusion = pd.crosstab(truth, guess, rownames=["true"], colnames=["predicted"], dropna=False)

    hits = pd.Series(np.diag(confusion), index=classes)
    precision = hits / confusion.sum(axis=0).replace(0, np.nan)
    recall = hits / confusion.sum(axis=1).replace(0, np.nan)
    per_class = pd.DataFrame(
        {
            "precision": precision,
            "recall": recall,
            "f1": 2 * precision * recall / (precision + recall),
            "support": confusion.sum(axis=1),
        }
    ).fillna(0.0)
    per_class.index.name = "class"

    confidence = np.exp(log_probs.max(axis=1))
    wrong = np.flatnonzero(predicted != labels)
    misclassified = pd.DataFrame(
        {"index": wrong, "true": labels[wrong], "predicted": predicted[wrong], "confidence": confidence[wrong]}
    ).sort_values("confidence", ascending=False)

    first = pd.DataFrame(logits[:FIRST_PREDICTIONS], columns=[f"logit_{c}" for c in classes])
    first.insert(0, "predicted", predicted[:FIRST_PREDICTIONS])
    first.insert(0, "true", labels[:FIRST_PREDICTIONS])
    first.index.name = "index"
    return {
        "test_accuracy": float((predicted == labels).mean()),
        "test_loss": float(-log_probs[np.arange(len(labels)), labels].mean()),
        "confusion": confusion,
        "per_class": per_class,
        "misclassified": misclassified,
        "first_predictions": first,
    }


def assess(out: Path, model_entry: Path, data_entry: Path) -> dict[str, Any]:
    train.tensorflow()
    import keras

    # safe_mode refuses a model file that would run code of its own when loaded.
    model = keras.models.load_model(model_entry / train.MODEL, safe_mode=True)
    x_test, y_test = preprocess.load_split(data_entry, "test")
    logits = model.predict(x_test, batch_size=_PREDICT_BATCH, verbose=0)
    scores = score(logits, y_test)
    scores["confusion"].to_csv(out / CONFUSION)
    scores["per_class"].to_csv(out / PER_CLASS)
    scores["misclassified"].to_csv(out / MISCLASSIFIED, index=False)
    scores["first_predictions"].to_csv(out / PREDICTIONS)
    metrics = {"test_accuracy": scores["test_accuracy"], "test_loss": scores["test_loss"]}
    (out / METRICS).write_text(json.dumps(metrics, indent=1))
    return metrics


def load_tables(entry: Path) -> dict[str, pd.DataFrame]:
    return {
        "confusion": pd.read_csv(entry / CONFUSION, index_col=0),
        "per_class": pd.read_csv(entry / PER_CLASS, index_col=0),
        "misclassified": pd.read_csv(entry / MISCLASSIFIED),
        "first_predictions": pd.read_csv(entry / PREDICTIONS, index_col=0),
    }


@stage_task(CACHE)
def evaluate_model(artifacts_dir: str, model: ModelRef, data: PreparedRef) -> MetricsRef:
    """Score the trained model on the test split."""
    store = ArtifactStore(artifacts_dir)
    model_entry, data_entry = store.path(model), store.path(data)
    return CACHE.produce(
        lambda out: assess(out, model_entry, data_entry),
        artifacts_dir,
        model=model,
        data=data,
    )
