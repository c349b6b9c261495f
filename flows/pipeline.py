"""The `mnist-pipeline` flow: five cached stages, from download to report."""

from __future__ import annotations

from typing import Any

from prefect import flow
from prefect.states import Failed
from pydantic import ValidationError

from flows import config
from flows.config import (
    AccuracyThreshold, BatchSize, DatasetName, Epochs, Folder, LearningRate, LrSchedule, Mirror, PipelineConfig,
    Seed, TrainLimit,
)
from flows.runner import StageRunner
from flows.stages import build_report, download_dataset, evaluate_model, preprocess_dataset, train_model


@flow(name="mnist-pipeline")  # retries: PREFECT_FLOWS_DEFAULT_RETRIES, Prefect's own setting
def mnist_pipeline(
    dataset: DatasetName = config.DEFAULT_DATASET,
    mirror: Mirror = "",
    epochs: Epochs = config.DEFAULT_EPOCHS,
    batch_size: BatchSize = config.DEFAULT_BATCH_SIZE,
    learning_rate: LearningRate = config.DEFAULT_LEARNING_RATE,
    lr_schedule: LrSchedule = config.DEFAULT_LR_SCHEDULE,
    train_limit: TrainLimit = None,
    seed: Seed = config.DEFAULT_SEED,
    artifacts_dir: Folder = config.DEFAULT_ARTIFACTS_DIR,
    accuracy_threshold: AccuracyThreshold = None,
) -> dict[str, Any]:
    """Train and evaluate the tutorial's MNIST CNN; returns the run summary.

    Args:
        dataset: mnist or fashion_mnist, as TensorFlow Datasets names them.
        mirror: A folder holding the dataset's four IDX files, read instead of downloading; empty: download.
        epochs: Training epochs, 1 to 1000.
        batch_size: Examples per training step, 1 to 65536.
        learning_rate: Adam's learning rate, above 0 and at most 1; with the cosine schedule, its value at the start.
        lr_schedule: cosine falls from the learning rate to 0 over the training; constant keeps it, as the tutorial does.
        train_limit: Train on the first N training images only; empty: all of them.
        seed: Seeds every random source, 0 to 4294967295.
        artifacts_dir: The artifact store, on the worker; a relative path starts in the project.
        accuracy_threshold: Least test accuracy to become the dataset's champion; empty: 0.95 (mnist), 0.80 (fashion_mnist).
    """
    try:
        cfg = PipelineConfig(
            dataset=dataset, mirror=mirror or None, epochs=epochs, batch_size=batch_size,
            learning_rate=learning_rate, lr_schedule=lr_schedule, train_limit=train_limit, seed=seed,
            artifacts_dir=artifacts_dir, accuracy_threshold=accuracy_threshold,
        )
    except ValidationError as error:
        # What the form's fields cannot check (paths, files): one line in the run's state message.
        return Failed(message=config.describe(error))
    run = StageRunner(cfg.artifacts_dir)
    # The raw uint8 splits: downloaded through TFDS, or read from a mirror.
    raw = run(download_dataset, cfg.dataset, cfg.mirror)
    # Pixels scaled to [0, 1], images reshaped to (N, 28, 28, 1), 20 samples drawn.
    data = run(preprocess_dataset, raw, cfg.train_limit)
    # The CNN fitted on the training split, validated on the test split.
    model = run(train_model, data, cfg.train)
    # Test loss and accuracy, confusion matrix, per-class scores.
    metrics = run(evaluate_model, model, data)
    # report.md and report.html.
    report = run(build_report, raw, data, model, metrics, cfg.train)
    # The quality gate, this run's report and its line in the run log: the model
    # becomes the dataset's champion only if good enough.
    return run.finish(cfg, model, metrics, report)
