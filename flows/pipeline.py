"""The `mnist-pipeline` flow: five cached stages, from download to report."""

from __future__ import annotations

from typing import Any

from prefect import Flow
from prefect.states import Failed
from pydantic import ValidationError

from flows import config
from flows.config import PipelineConfig
from flows.runner import StageRunner
from flows.stages import build_report, download_dataset, evaluate_model, preprocess_dataset, train_model


def mnist_pipeline(**parameters: Any) -> dict[str, Any]:
    """Train and evaluate the tutorial's MNIST CNN; returns the run summary."""
    try:
        cfg = PipelineConfig(**{**parameters, "mirror": parameters.get("mirror") or None})
    except ValidationError as error:
        # What the form's fields cannot check (paths, files): one line in the run's state message.
        return Failed(message=config.describe(error))
    with StageRunner(cfg.artifacts_dir) as run:
        # The raw uint8 splits: downloaded through TFDS, or read from a mirror.
        raw = run(download_dataset, cfg.dataset, cfg.mirror)
        # Images reshaped to (N, 28, 28, 1), uint8 pixels, validation held out, 20 samples drawn.
        data = run(preprocess_dataset, raw, cfg.train_limit, cfg.validation_split)
        # The CNN fitted on the training split, validated on the held-out validation split.
        model = run(train_model, data, cfg.train)
        # Test loss and accuracy, confusion matrix, per-class scores.
        metrics = run(evaluate_model, model, data)
        # report.md and report.html.
        report = run(build_report, raw, data, model, metrics, cfg.train)
        # The quality gate, this run's report and its line in the run log: the model
        # becomes the dataset's champion only if good enough.
        return run.finish(cfg, model, metrics, report)


# Its parameters are PipelineConfig's fields. Retries: Prefect's own PREFECT_FLOWS_DEFAULT_RETRIES.
mnist_pipeline = Flow(config.with_parameters(mnist_pipeline), name="mnist-pipeline")
