"""Stage 4: test loss and accuracy, the confusion matrix and per-class scores."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from tasks.refs import MetricsRef, ModelRef, PreparedRef
from tasks.pixels import scaled
from tasks.runtime import tensorflow

# The tutorial prints the logits of test image 1 (`pre[1]`); keep the first few.
FIRST_PREDICTIONS = 10
_PREDICT_BATCH = 1024


def log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def score(logits: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    """Every table the report shows, from the logits and the true labels."""
    import pandas as pd

    log_probs = log_softmax(logits.astype(np.float64))
    predicted = logits.argmax(axis=1)
    classes = list(range(logits.shape[1]))
    truth = pd.Categorical(labels, categories=classes)
    guess = pd.Categorical(predicted, categories=classes)
    confusion = pd.crosstab(truth, guess, rownames=["true"], colnames=["predicted"], dropna=False)

    hits = pd.Series(np.diag(confusion), index=classes)
    precision = hits / confusion.sum(axis=0).replace(0, np.nan)
    recall = hits / confusion.sum(axis=1).replace(0, np.nan)
    f1 = 2 * precision * recall / (precision + recall)
    per_class = pd.DataFrame({"precision": precision, "recall": recall, "f1": f1,
                              "support": confusion.sum(axis=1)}).fillna(0.0)
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


def evaluate_model(out: Path, model: ModelRef, data: PreparedRef) -> dict[str, Any]:
    """Score the trained model on the test split."""
    tensorflow()
    x_test, y_test = data.split("test")
    logits = model.load().predict(scaled(x_test), batch_size=_PREDICT_BATCH, verbose=0)
    scores = score(logits, y_test)
    for name, (file, indexed) in MetricsRef.TABLES.items():
        scores[name].to_csv(out / file, index=indexed)
    metrics = {"test_accuracy": scores["test_accuracy"], "test_loss": scores["test_loss"],
               "test_count": len(y_test), "test_sha256": data.test_sha256}
    (out / MetricsRef.METRICS).write_text(json.dumps(metrics, indent=1))
    return metrics
