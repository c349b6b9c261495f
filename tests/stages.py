"""Runs the stages' plain functions in order on tiny data, for the stage tests."""

from __future__ import annotations

from pathlib import Path

from flows.config import TINY, train_params
from flows.stages import build_report, download_dataset, evaluate_model, preprocess_dataset, train_model

# Enough steps for the synthetic classes to be told apart.
PARAMS = train_params(epochs=3, batch_size=TINY["batch_size"])


def run_stages(store: str, mirror: Path, upto: str = "report") -> dict:
    refs = {"raw": download_dataset.fn(store, "mnist", str(mirror))}
    refs["data"] = preprocess_dataset.fn(store, refs["raw"])
    if upto == "preprocess":
        return refs
    refs["model"] = train_model.fn(store, refs["data"], PARAMS)
    if upto == "train":
        return refs
    refs["metrics"] = evaluate_model.fn(store, refs["model"], refs["data"])
    if upto == "evaluate":
        return refs
    refs["report"] = build_report.fn(store, **refs, params=PARAMS)
    return refs
