"""Stage 3: fit the tutorial's CNN, on the first GPU when there is one."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable

import pandas as pd
from prefect import task

from tasks import preprocess
from tasks.caching import StageCache, run_logger
from tasks.config import TrainParams
from tasks.refs import ModelRef, PreparedRef
from tasks.store import ArtifactStore

MODEL = "model.keras"
HISTORY = "history.csv"
SUMMARY = "model_summary.txt"
TRAIN_INFO = "train.json"
# Validation runs forward only, so it can take larger batches than training.
_EVAL_BATCH = 1024

CACHE = StageCache(stage="train", module=__name__)


def select_device() -> str:
    """The tutorial's GPU set-up: the first GPU only, its memory grown as needed."""
    import tensorflow as tf

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


def make_dataset(x, y, batch_size: int, seed: int | None = None):
    """A tf.data pipeline; shuffled every epoch when a seed is given."""
    import tensorflow as tf

    ds = tf.data.Dataset.from_tensor_slices((x, y))
    if seed is not None:
        ds = ds.shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def _progress_callback(epochs: int, say: Callable[[str], None]):
    import keras

    class EpochProgress(keras.callbacks.Callback):
        """One line per finished epoch, and its wall time."""

        def __init__(self):
            super().__init__()
            self.seconds: list[float] = []

        def on_epoch_begin(self, epoch, logs=None):
            self._start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            self.seconds.append(round(time.perf_counter() - self._start, 3))
            scores = " - ".join(f"{k}: {v:.4f}" for k, v in (logs or {}).items())
            say(f"epoch {epoch + 1}/{epochs} - {scores} - {self.seconds[-1]:.1f}s")

    return EpochProgress()


def fit(out: Path, data_entry: Path, params: TrainParams, say: Callable[[str], None]) -> dict[str, Any]:
    """Train on the prepared splits and write the model, its history and its summary."""
    device = select_device()
    import keras

    keras.utils.set_random_seed(params.seed)
    x_train, y_train = preprocess.load_split(data_entry, "train")
    x_test, y_test = preprocess.load_split(data_entry, "test")

    model = build_model()
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=params.learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    progress = _progress_callback(params.epochs, say)
    history = model.fit(
        make_dataset(x_train, y_train, params.batch_size, seed=params.seed),
        epochs=params.epochs,
        validation_data=make_dataset(x_test, y_test, _EVAL_BATCH),
        callbacks=[progress],
        # tf.data shuffles, seeded, every epoch.
        shuffle=False,
        verbose=0,
    )

    model.save(out / MODEL)
    table = pd.DataFrame(history.history)
    table.insert(0, "epoch", range(1, len(table) + 1))
    table["seconds"] = progress.seconds
    table.to_csv(out / HISTORY, index=False)
    lines: list[str] = []
    model.summary(print_fn=lambda line, *args, **kwargs: lines.append(line))
    (out / SUMMARY).write_text("\n".join(lines) + "\n")
    info = {
        "epochs_run": len(table),
        "epoch_seconds": progress.seconds,
        "resumed_from_epoch": None,
        "device": device,
    }
    (out / TRAIN_INFO).write_text(json.dumps(info, indent=1))
    return info


def load_history(entry: Path) -> pd.DataFrame:
    return pd.read_csv(entry / HISTORY)


@task(cache_policy=CACHE, persist_result=True, result_serializer="json")
def train_model(artifacts_dir: str, data: PreparedRef, params: TrainParams) -> ModelRef:
    """Fit the CNN with Adam on the training split, validating on the test split."""
    data_entry = ArtifactStore(artifacts_dir).path(data)
    say = run_logger().info
    return CACHE.produce(
        ModelRef, lambda out: fit(out, data_entry, params, say), artifacts_dir, data=data, params=params
    )
