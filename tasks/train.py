"""Stage 3: fit the tutorial's CNN, on every GPU (one replica each) or else the CPU."""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional

from tasks import checkpoint
from tasks.pixels import scaled
from tasks.refs import ModelRef, PreparedRef
from tasks.runtime import distribution, select_device, visible_gpus

if TYPE_CHECKING:
    from tasks.params import TrainParams
# Validation runs forward only, so it can take larger batches than training.
_EVAL_BATCH = 1024
_SUMMARY_WIDTH = 72
# Spaces the per-epoch shuffle seeds of different run seeds apart.
_EPOCH_SEEDS = 100_003


def replicas(inputs: Any) -> dict[str, Any]:
    """Key material besides the inputs: several GPUs or hosts (TF_CONFIG) make a step's batch that many times the
    batch size, and so another model; one device adds nothing, so CPU and single-GPU keys stay as they were."""
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
    import tensorflow as tf

    return tf.data.Dataset.from_tensor_slices((x, y)).batch(batch_size).prefetch(tf.data.AUTOTUNE)


def epoch_order(train, size: int, seed: int, epoch: int, batch_size: int):
    """Epoch `epoch`'s shuffled batches: a function of the seed and the epoch only."""
    import tensorflow as tf

    shuffled = train.shuffle(size, seed=seed * _EPOCH_SEEDS + epoch, reshuffle_each_iteration=False)
    return shuffled.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def _compiled_model(params: TrainParams, steps: int, resume_from: Optional[Path], strategy):
    import keras

    with strategy.scope():  # the variables live on every replica
        if resume_from is not None:
            # The checkpoint holds the optimizer's state too (its step count, so the schedule goes
            # on where it was); safe_mode refuses code in the file.
            return keras.models.load_model(resume_from / checkpoint.MODEL, safe_mode=True)
        model = build_model()
        # cosine: the rate falls along a half cosine from its start to 0 over all `steps`, batch by batch.
        rate = (keras.optimizers.schedules.CosineDecay(params.learning_rate, decay_steps=steps)
                if params.lr_schedule == "cosine" else params.learning_rate)
        model.compile(
            optimizer=keras.optimizers.Adam(learning_rate=rate),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=["accuracy"],
        )
        return model


def _replay(logs: Path, history: list[dict[str, Any]]) -> None:
    """TensorBoard's curves of the epochs a checkpoint holds, written afresh from its history: the same curves
    whether or not the attempt that trained them lived to log them, and none of an attempt that is not resumed."""
    import tensorflow as tf

    shutil.rmtree(logs, ignore_errors=True)
    for split, prefix in (("train", ""), ("validation", "val_")):
        if not history:
            break
        with tf.summary.create_file_writer(str(logs / split)).as_default():
            for row in history:
                for name, value in row.items():
                    if name not in ("epoch", "seconds") and name.startswith("val_") == (prefix == "val_"):
                        tf.summary.scalar(f"epoch_{name[len(prefix):]}", value, step=row["epoch"] - 1)


def train_model(out: Path, data: PreparedRef, params: TrainParams, *, work: Path, log: Any,
                progress: Callable[[float], None], check_lock: Callable[[], None] = lambda: None) -> dict[str, Any]:
    """Fit the CNN with Adam on the training split, validating on the held-out split; checkpointed in `work`."""
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
    # The batch of one step across the replicas, which split it evenly.
    global_batch = params.batch_size * strategy.num_replicas_in_sync
    steps = params.epochs * math.ceil(len(x_train) / global_batch)
    resume_from = checkpoint.latest(work)
    try:
        history = checkpoint.load_history(resume_from) if resume_from else []
        model = _compiled_model(params, steps, resume_from, strategy)
    except Exception as error:  # a checkpoint damaged on disk: start over rather than fail for ever
        log.info(f"checkpoint {resume_from} is unreadable ({type(error).__name__}: {error}); training from epoch 0")
        shutil.rmtree(resume_from, ignore_errors=True)
        resume_from, history = None, []
        model = _compiled_model(params, steps, None, strategy)
    if resume_from:
        log.info(f"resuming after epoch {len(history)}/{params.epochs} from {resume_from}")
    progress(100.0 * len(history) / params.epochs)
    recorder = checkpoint.epoch_recorder(params.epochs, history, work, log.info, progress, check_lock)
    train = tf.data.Dataset.from_tensor_slices((x_train, y_train))
    validation = make_dataset(x_val, y_val, _EVAL_BATCH)
    first = len(history)
    # TensorBoard's logs beside the checkpoints, so a resumed run goes on with the same curves. Each epoch's
    # are written after its checkpoint: an epoch trained again after a crash is never logged twice.
    logs = work / ModelRef.TENSORBOARD
    _replay(logs, history)
    # One fit call per epoch, so each epoch's order is chosen here, by its number.
    for epoch in range(first, params.epochs):
        board = keras.callbacks.TensorBoard(log_dir=str(logs), write_graph=epoch == first)
        model.fit(
            epoch_order(train, len(x_train), params.seed, epoch, global_batch),
            initial_epoch=epoch, epochs=epoch + 1, validation_data=validation, callbacks=[recorder, board],
            verbose=0,
            # The order is epoch_order's; Keras must not (and cannot) shuffle a tf.data pipeline.
            shuffle=False,
        )

    shutil.copytree(logs, out / ModelRef.TENSORBOARD)
    model.save(out / ModelRef.MODEL)
    pd.DataFrame(history).to_csv(out / ModelRef.HISTORY, index=False)
    lines: list[str] = []
    # Narrow enough for the Prefect UI's markdown artifact, which clips wider code blocks.
    model.summary(line_length=_SUMMARY_WIDTH, print_fn=lambda line, *args, **kwargs: lines.append(line))
    (out / ModelRef.SUMMARY).write_text("\n".join(lines) + "\n")
    info = {
        "epochs_run": params.epochs - first,
        "epoch_seconds": [row["seconds"] for row in history[first:]],
        "resumed_from_epoch": first if resume_from else None,
        "device": device,
        "batch_size": params.batch_size,
        "replicas": strategy.num_replicas_in_sync,
        "notes": [],
        "train_count": data.train_count,
        "validation_count": data.validation_count or data.test_count,
        "validated_on": data.validated_on,
        "validation_accuracy": float(history[-1]["val_accuracy"]),
        "validation_loss": float(history[-1]["val_loss"]),
    }
    (out / ModelRef.INFO).write_text(json.dumps(info, indent=1))
    return info
