"""Per-epoch training checkpoints, so a crash costs at most the epoch in progress.

Each epoch's data order depends only on the seed and the epoch's number, so a
resumed run sees the batches an uninterrupted one would have.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Optional

from engine.retries import PermanentError
from engine.store import fsync, raise_if_full

MODEL = "model.keras"
STATE = "state.json"
_PREFIX = "epoch-"


class TrainingDiverged(PermanentError):
    """The loss is no longer a number: another try would diverge the same way."""


def latest(folder: Path) -> Optional[Path]:
    """The newest complete checkpoint in `folder`, if any."""
    complete = sorted(p for p in folder.glob(f"{_PREFIX}*") if (p / STATE).is_file())
    return complete[-1] if complete else None


def load_history(checkpoint: Path) -> list[dict[str, Any]]:
    return json.loads((checkpoint / STATE).read_text())["history"]


def save(folder: Path, model, history: list[dict[str, Any]]) -> Path:
    """Write a checkpoint for `len(history)` finished epochs; drop the older ones."""
    final = folder / f"{_PREFIX}{len(history):04d}"
    tmp = folder / f".tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir(parents=True)
    try:
        model.save(tmp / MODEL)
        # Written last: a checkpoint without its state file is incomplete and ignored.
        (tmp / STATE).write_text(json.dumps({"history": history}))
        for path in (tmp / MODEL, tmp / STATE, tmp):
            fsync(path)
        if final.exists():
            shutil.rmtree(final)
        os.rename(tmp, final)
    except OSError as err:
        shutil.rmtree(tmp, ignore_errors=True)
        raise_if_full(err, folder, f"the checkpoint of epoch {len(history)} in {folder}")
        raise
    for old in folder.glob(f"{_PREFIX}*"):
        if old != final:
            shutil.rmtree(old, ignore_errors=True)
    return final


def epoch_recorder(epochs: int, history: list[dict[str, Any]], folder: Path, say: Callable[[str], None],
                   progress: Callable[[float], None], check_lock: Callable[[], None]):
    """A Keras callback: per epoch, its time, a history row, a checkpoint (once `check_lock()` passes), progress."""
    import keras
    import numpy as np

    class EpochRecorder(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.started = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            logs = logs or {}
            loss = float(logs.get("loss", 0.0))
            # A model of NaN weights is neither kept nor resumed from. The weights are checked
            # too: oneDNN's fused convolution and ReLU turn NaN into 0, so NaN weights in the
            # first layers can leave the loss finite.
            what = None if math.isfinite(loss) else f"the loss is {loss}"
            if what is None and not all(np.isfinite(w).all() for w in self.model.get_weights()):
                what = "the weights are not all finite"
            if what:
                raise TrainingDiverged(f"training diverged: {what} after epoch {epoch + 1}; lower the learning rate")
            seconds = round(time.perf_counter() - self.started, 3)
            history.append({"epoch": epoch + 1, **{k: float(v) for k, v in logs.items()}, "seconds": seconds})
            check_lock()  # the folder is this run's still
            # Saved before the progress line: "epoch K/N" means K epochs are safe.
            save(folder, self.model, history)
            scores = " - ".join(f"{k}: {float(v):.4f}" for k, v in logs.items())
            say(f"epoch {epoch + 1}/{epochs} - {scores} - {seconds:.1f}s")
            progress(100.0 * (epoch + 1) / epochs)

    return EpochRecorder()
