"""Stage 3: fit the tutorial's CNN, on the first GPU when there is one."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import pandas as pd

from tasks import checkpoint, preprocess
from tasks.caching import StageCache, stage_task, run_logger
from tasks.config import TrainParams
from tasks.refs import ModelRef, PreparedRef
from tasks.retries import TransientError
from tasks.store import ArtifactStore

MODEL = "model.keras"
HISTORY = "history.csv"
SUMMARY = "model_summary.txt"
TRAIN_INFO = "train.json"
# Per-stage-fingerprint checkpoint folders, beside the train entries.
CHECKPOINTS = ".checkpoints"
# In a checkpoint folder: the batch size to use after running out of GPU memory.
OUT_OF_MEMORY = "out_of_memory.json"
# Validation runs forward only, so it can take larger batches than training.
_EVAL_BATCH = 1024
_SUMMARY_WIDTH = 72
# Spaces the per-epoch shuffle seeds of different run seeds apart.
_EPOCH_SEEDS = 100_003

CACHE = StageCache(stage="train", module=__name__)


# What TensorFlow's C++ start-up writes straight to the terminal when a machine has no CUDA driver.
_NO_DRIVER_NOISE = re.compile(rb"Could not find cuda drivers|failed call to cuInit|"
                              rb"All log messages before absl::InitializeLog\(\) is called")


@contextmanager
def _without_no_driver_noise() -> Iterator[None]:
    """Hold back what is written to stderr's file descriptor; pass on all but the no-driver lines."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as caught:
        os.dup2(caught.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            caught.seek(0)
            for line in caught:
                if not _NO_DRIVER_NOISE.search(line):
                    os.write(2, line)


def tensorflow():
    """TensorFlow, imported and its GPUs listed, without its no-driver lines on a machine without CUDA."""
    with _without_no_driver_noise():
        import tensorflow as tf

        tf.config.list_physical_devices("GPU")
    return tf


def select_device() -> str:
    """The tutorial's GPU set-up: the first GPU only, its memory grown as needed."""
    tf = tensorflow()
    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        return "CPU"
    try:
        tf.config.experimental.set_memory_growth(gpus[0], True)
        tf.config.set_visible_devices([gpus[0]], "GPU")
    except RuntimeError:
        pass  # TensorFlow was initialised earlier in this process; its choice stands
    return "GPU"


def build_model():
    """Conv(32) > pool > Conv(64) > pool > Dense(64) > 10 logits, as in the tutorial."""
    from keras import Input, Sequential, layers

    return Sequential(
        [
            Input(shape=(28, 28, 1)),
            layers.Conv2D(32, (3, 3), activation="relu"),
            layers.MaxPooling2D((2, 2)),
            layers.Conv2D(64, (3, 3), activation="relu"),
            layers.MaxPooling2D((2, 2)),
            layers.Flatten(),
            layers.Dense(64, activation="relu"),
            layers.Dense(10),
        ]
    )


def make_dataset(x, y, batch_size: int):
    """A batched, prefetching tf.data pipeline over (x, y), in order."""
    import tensorflow as tf

    return tf.data.Dataset.from_tensor_slices((x, y)).batch(batch_size).prefetch(tf.data.AUTOTUNE)


def epoch_order(train, size: int, seed: int, epoch: int, batch_size: int):
    """Epoch `epoch`'s shuffled batches: a function of the seed and the epoch only."""
    import tensorflow as tf

    shuffled = train.shuffle(size, seed=seed * _EPOCH_SEEDS + epoch, reshuffle_each_iteration=False)
    return shuffled.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def learning_rate_at(params: TrainParams, done: float) -> float:
    """The learning rate once the share `done` (0 to 1) of all training steps is behind."""
    if params.lr_schedule == "constant":
        return params.learning_rate
    return params.learning_rate * 0.5 * (1.0 + math.cos(math.pi * done))


def lr_schedule(params: TrainParams, steps_per_epoch: int):
    """A Keras callback setting Adam's rate before every batch, from the epoch and batch numbers.

    Unlike a schedule of optimizer steps (keras.optimizers.schedules.CosineDecay),
    it stays right when training resumes from a checkpoint with a smaller batch
    after running out of GPU memory.
    """
    import keras

    class Schedule(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self._epoch = epoch

        def on_train_batch_begin(self, batch, logs=None):
            done = (self._epoch + batch / steps_per_epoch) / params.epochs
            self.model.optimizer.learning_rate = learning_rate_at(params, done)

    return Schedule()


def _compiled_model(params: TrainParams, resume_from: Optional[Path]):
    import keras

    if resume_from is not None:
        # The checkpoint holds the optimizer's state too; safe_mode refuses code in the file.
        return keras.models.load_model(resume_from / checkpoint.MODEL, safe_mode=True)
    model = build_model()
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=params.learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    return model


def fit(out: Path, data_entry: Path, params: TrainParams, say: Callable[[str], None],
        checkpoints: Path, progress: Callable[[float], None] = lambda percent: None) -> dict[str, Any]:
    """Train on the prepared splits, resuming from `checkpoints` when they hold any.

    Writes the model, the history of every epoch and the model's summary to `out`.
    """
    device = select_device()
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(params.seed)
    x_train, y_train = preprocess.load_split(data_entry, "train")
    x_test, y_test = preprocess.load_split(data_entry, "test")

    resume_from = checkpoint.latest(checkpoints)
    try:
        history = checkpoint.load_history(resume_from) if resume_from else []
        model = _compiled_model(params, resume_from)
    except Exception as error:  # a checkpoint damaged on disk: start over rather than fail for ever
        say(f"checkpoint {resume_from} is unreadable ({type(error).__name__}: {error}); training from epoch 0")
        shutil.rmtree(resume_from, ignore_errors=True)
        resume_from, history = None, []
        model = _compiled_model(params, None)
    if resume_from:
        say(f"resuming after epoch {len(history)}/{params.epochs} from {resume_from}")
    recorder = checkpoint.epoch_recorder(params.epochs, history, checkpoints, say, progress)
    train = tf.data.Dataset.from_tensor_slices((x_train, y_train))
    validation = make_dataset(x_test, y_test, _EVAL_BATCH)
    first = len(history)
    batch_size = _batch_size(params, checkpoints)
    callbacks = [recorder]
    if params.lr_schedule != "constant":
        callbacks.insert(0, lr_schedule(params, math.ceil(len(x_train) / batch_size)))
    try:
        # One fit call per epoch, so each epoch's order is chosen here, by its number.
        for epoch in range(first, params.epochs):
            model.fit(
                epoch_order(train, len(x_train), params.seed, epoch, batch_size),
                initial_epoch=epoch, epochs=epoch + 1,
                validation_data=validation, callbacks=callbacks, verbose=0,
                # The order is epoch_order's; Keras must not (and cannot) shuffle a tf.data pipeline.
                shuffle=False,
            )
    except tf.errors.ResourceExhaustedError as error:
        raise _smaller_batch_next_time(batch_size, checkpoints) from error

    model.save(out / MODEL)
    pd.DataFrame(history).to_csv(out / HISTORY, index=False)
    lines: list[str] = []
    # Narrow enough for the Prefect UI's markdown artifact, which clips wider code blocks.
    model.summary(line_length=_SUMMARY_WIDTH, print_fn=lambda line, *args, **kwargs: lines.append(line))
    (out / SUMMARY).write_text("\n".join(lines) + "\n")
    notes = []
    if batch_size != params.batch_size:
        notes.append(f"batch size {params.batch_size} ran out of GPU memory; trained with {batch_size}")
    info = {
        "epochs_run": params.epochs - first,
        "epoch_seconds": [row["seconds"] for row in history[first:]],
        "resumed_from_epoch": first if resume_from else None,
        "device": device,
        "batch_size": batch_size,
        "notes": notes,
    }
    (out / TRAIN_INFO).write_text(json.dumps(info, indent=1))
    return info


def load_history(entry: Path) -> pd.DataFrame:
    return pd.read_csv(entry / HISTORY)


def _batch_size(params: TrainParams, checkpoints: Path) -> int:
    """The requested batch size, or the smaller one an out-of-memory failure of this task run left.

    A note left by another task run (one that gave up, or was killed) is ignored:
    a new run tries the batch size it was asked for.
    """
    note = checkpoints / OUT_OF_MEMORY
    if not note.is_file():
        return params.batch_size
    smaller = json.loads(note.read_text())
    return smaller["batch_size"] if smaller["task_run_id"] == _task_run_id() else params.batch_size


def _task_run_id() -> Optional[str]:
    from prefect.runtime import task_run

    return task_run.id


def _smaller_batch_next_time(batch_size: int, checkpoints: Path) -> Exception:
    if batch_size == 1:
        return RuntimeError("GPU out of memory even at batch size 1")
    smaller = batch_size // 2
    checkpoints.mkdir(parents=True, exist_ok=True)
    (checkpoints / OUT_OF_MEMORY).write_text(json.dumps({"batch_size": smaller, "task_run_id": _task_run_id()}))
    return TransientError(f"GPU out of memory at batch size {batch_size}; the next try uses {smaller}")


def _progress_artifact(params: TrainParams, checkpoints: Path) -> Callable[[float], None]:
    """A progress artifact the UI shows live, updated as each epoch ends.

    It starts where the checkpoints leave training, so a resumed run never goes backwards.
    """
    from prefect.artifacts import create_progress_artifact, update_progress_artifact
    from prefect.context import TaskRunContext

    if TaskRunContext.get() is None:  # called as a plain function: nobody to show it to
        return lambda percent: None
    artifact_id = create_progress_artifact(progress=progress_at_start(params, checkpoints), key="training-progress",
                                           description="Share of the training epochs done")
    return lambda percent: update_progress_artifact(artifact_id=artifact_id, progress=round(percent, 1))


def progress_at_start(params: TrainParams, checkpoints: Path) -> float:
    """The share of the epochs done (percent, rounded) that the checkpoints hold."""
    resume_from = checkpoint.latest(checkpoints)
    try:
        done = len(checkpoint.load_history(resume_from)) if resume_from else 0
    except (OSError, ValueError, KeyError):  # unreadable: fit starts over, and says so
        done = 0
    return round(100.0 * done / params.epochs, 1)


def checkpoint_folder(artifacts_dir: str, fingerprint: str) -> Path:
    """Where a training run with this fingerprint keeps its checkpoints until it completes."""
    return Path(artifacts_dir) / CACHE.stage / CHECKPOINTS / fingerprint


@stage_task(CACHE)
def train_model(artifacts_dir: str, data: PreparedRef, params: TrainParams) -> ModelRef:
    """Fit the CNN with Adam on the training split, validating on the test split."""
    data_entry = ArtifactStore(artifacts_dir).path(data)
    fingerprint = CACHE.fingerprint({"artifacts_dir": artifacts_dir, "data": data, "params": params})
    checkpoints = checkpoint_folder(artifacts_dir, fingerprint)
    say = run_logger().info
    ref = CACHE.produce(
        lambda out: fit(out, data_entry, params, say, checkpoints, _progress_artifact(params, checkpoints)),
        artifacts_dir, data=data, params=params,
    )
    # The entry is complete: its checkpoints have served their purpose.
    shutil.rmtree(checkpoints, ignore_errors=True)
    return ref
