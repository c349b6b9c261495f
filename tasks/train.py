"""Stage 3: fit the tutorial's CNN, on the first GPU when there is one."""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path
from typing import Any, Callable, Optional

from tasks import checkpoint
from tasks.pixels import scaled
from tasks.refs import ModelRef, PreparedRef
from engine.retries import TransientError
from tasks.params import TrainParams
from tasks.runtime import distribution, select_device, visible_gpus

# In a checkpoint folder: the batch size to use after running out of GPU memory.
OUT_OF_MEMORY = "out_of_memory.json"
# Validation runs forward only, so it can take larger batches than training.
_EVAL_BATCH = 1024
_SUMMARY_WIDTH = 72
# Spaces the per-epoch shuffle seeds of different run seeds apart.
_EPOCH_SEEDS = 100_003


def replicas(inputs: Any) -> dict[str, Any]:
    """Key material besides the inputs: how many replicas would train together, when more than one.

    Several GPUs, or several hosts (TF_CONFIG), make a step's batch that many
    times the batch size, and so another model. One device adds nothing, so
    the keys of CPU and single-GPU runs stay as they were.
    """
    gpus = visible_gpus()
    extra: dict[str, Any] = {"replicas": gpus} if gpus > 1 else {}
    if os.environ.get("TF_CONFIG"):
        extra["tf_config"] = json.loads(os.environ["TF_CONFIG"]).get("cluster", {})
    return extra


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


def _compiled_model(params: TrainParams, resume_from: Optional[Path], strategy):
    with strategy.scope():  # the variables live on every replica
        return _model(params, resume_from)


def _model(params: TrainParams, resume_from: Optional[Path]):
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


def train_model(out: Path, data: PreparedRef, params: TrainParams, *, work: Path, log: Any,
                progress: Callable[[float], None], attempt: int,
                check_lock: Callable[[], None] = lambda: None) -> dict[str, Any]:
    """Fit the CNN with Adam on the training split, validating on the held-out validation split.

    Resumes from the checkpoints in `work` when they hold any, and writes one
    there after each epoch unless `check_lock` finds another run took over
    the entry (it raises). Writes the model,
    the history of every epoch and the model's summary to `out`. With several
    GPUs, each takes `params.batch_size` images a step (a MirroredStrategy).
    """
    device = select_device()
    strategy = distribution()
    import keras
    import pandas as pd
    import tensorflow as tf

    keras.utils.set_random_seed(params.seed)
    x_train, y_train = data.split("train")
    # The held-out part of the training split; the test split only when none is held out (the tutorial's way).
    x_val, y_val = data.split(data.validated_on)
    x_train, x_val = scaled(x_train), scaled(x_val)
    checkpoints, say = work, log.info

    resume_from = checkpoint.latest(checkpoints)
    try:
        history = checkpoint.load_history(resume_from) if resume_from else []
        model = _compiled_model(params, resume_from, strategy)
    except Exception as error:  # a checkpoint damaged on disk: start over rather than fail for ever
        say(f"checkpoint {resume_from} is unreadable ({type(error).__name__}: {error}); training from epoch 0")
        shutil.rmtree(resume_from, ignore_errors=True)
        resume_from, history = None, []
        model = _compiled_model(params, None, strategy)
    if resume_from:
        say(f"resuming after epoch {len(history)}/{params.epochs} from {resume_from}")
    progress(100.0 * len(history) / params.epochs)
    recorder = checkpoint.epoch_recorder(params.epochs, history, checkpoints, say, progress, check_lock)
    train = tf.data.Dataset.from_tensor_slices((x_train, y_train))
    validation = make_dataset(x_val, y_val, _EVAL_BATCH)
    first = len(history)
    batch_size = _batch_size(params, checkpoints, attempt)
    # The batch of one step across the replicas, which split it evenly.
    global_batch = batch_size * strategy.num_replicas_in_sync
    callbacks = [recorder]
    if params.lr_schedule != "constant":
        callbacks.insert(0, lr_schedule(params, math.ceil(len(x_train) / global_batch)))
    try:
        # One fit call per epoch, so each epoch's order is chosen here, by its number.
        for epoch in range(first, params.epochs):
            model.fit(
                epoch_order(train, len(x_train), params.seed, epoch, global_batch),
                initial_epoch=epoch, epochs=epoch + 1,
                validation_data=validation, callbacks=callbacks, verbose=0,
                # The order is epoch_order's; Keras must not (and cannot) shuffle a tf.data pipeline.
                shuffle=False,
            )
    except tf.errors.ResourceExhaustedError as error:
        raise _smaller_batch_next_time(batch_size, checkpoints) from error

    model.save(out / ModelRef.MODEL)
    pd.DataFrame(history).to_csv(out / ModelRef.HISTORY, index=False)
    lines: list[str] = []
    # Narrow enough for the Prefect UI's markdown artifact, which clips wider code blocks.
    model.summary(line_length=_SUMMARY_WIDTH, print_fn=lambda line, *args, **kwargs: lines.append(line))
    (out / ModelRef.SUMMARY).write_text("\n".join(lines) + "\n")
    notes = []
    if batch_size != params.batch_size:
        notes.append(f"batch size {params.batch_size} ran out of GPU memory; trained with {batch_size}")
    info = {
        "epochs_run": params.epochs - first,
        "epoch_seconds": [row["seconds"] for row in history[first:]],
        "resumed_from_epoch": first if resume_from else None,
        "device": device,
        "batch_size": batch_size,
        "replicas": strategy.num_replicas_in_sync,
        "notes": notes,
        "train_count": data.train_count,
        "validation_count": data.validation_count if data.validation_count else data.test_count,
        "validated_on": data.validated_on,
        "validation_accuracy": float(history[-1]["val_accuracy"]),
        "validation_loss": float(history[-1]["val_loss"]),
    }
    (out / ModelRef.INFO).write_text(json.dumps(info, indent=1))
    return info


def _batch_size(params: TrainParams, checkpoints: Path, attempt: int) -> int:
    """The requested batch size, or the smaller one an out-of-memory failure of an earlier try left.

    A new task run (a new run, or a flow run retried) tries the batch size it was asked for.
    """
    note = checkpoints / OUT_OF_MEMORY
    if attempt <= 1 or not note.is_file():
        return params.batch_size
    return json.loads(note.read_text())["batch_size"]


def _smaller_batch_next_time(batch_size: int, checkpoints: Path) -> Exception:
    if batch_size == 1:
        return RuntimeError("GPU out of memory even at batch size 1")
    smaller = batch_size // 2
    checkpoints.mkdir(parents=True, exist_ok=True)
    (checkpoints / OUT_OF_MEMORY).write_text(json.dumps({"batch_size": smaller}))
    return TransientError(f"GPU out of memory at batch size {batch_size}; the next try uses {smaller}")
