"""What the train stage spends on an epoch besides training it, piece by piece, in one process.

    PYTHONPATH=. python benchmarks/epoch_overhead.py --mirror data/mnist [--batch-size 128] [--repeats 7]

The default recipe's split of the mirror's training images (the last 10% held
out for validation), the tutorial's model (tasks/train.py's build_model, oneDNN
on as in the pipeline), traced first. Each piece is timed `--repeats` times and
its median printed, beside the median of whole epochs of training alone:
- a `model.fit` call on one batch, with and without the validation split
  (the stage calls `fit` once per epoch, so it pays the call's set-up each epoch);
- `model.evaluate` on the validation split (what validation adds to an epoch);
- `tasks.checkpoint.save` (the model, the optimizer's state and the history, fsynced);
- iterating the stage's `epoch_order` pipeline alone (on another thread during training);
- one epoch of training alone, through `epoch_order`.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable

from in_process import training_split, tutorial_model
from tasks import checkpoint
from tasks.train import _EVAL_BATCH, epoch_order, make_dataset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mirror", required=True)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()

    import tensorflow as tf

    x, y = training_split(args.mirror)
    held = len(x) // 10
    train = tf.data.Dataset.from_tensor_slices((x[:-held], y[:-held]))
    size, validation = len(x) - held, make_dataset(x[-held:], y[-held:], _EVAL_BATCH)
    model = tutorial_model()
    one = train.take(args.batch_size).batch(args.batch_size)
    model.fit(one, validation_data=validation, verbose=0, shuffle=False)  # traces training and validation

    def median(piece: Callable[[], object], repeats: int = args.repeats) -> float:
        seconds = []
        for _ in range(repeats):
            start = time.perf_counter()
            piece()
            seconds.append(time.perf_counter() - start)
        return statistics.median(seconds)

    folder = Path(tempfile.mkdtemp(prefix="epoch-overhead-"))
    rows = {
        "fit call on one batch": median(lambda: model.fit(one, verbose=0, shuffle=False)),
        "fit call on one batch, with validation": median(lambda: model.fit(one, validation_data=validation,
                                                                            verbose=0, shuffle=False)),
        "validation (evaluate)": median(lambda: model.evaluate(validation, verbose=0)),
        "checkpoint.save": median(lambda: checkpoint.save(folder, model, [{"epoch": 1}])),
        "epoch_order, iterated alone": median(lambda: [None for _ in epoch_order(train, size, 0, 1,
                                                                                 args.batch_size)]),
        "one epoch of training alone": median(lambda: model.fit(epoch_order(train, size, 0, 1, args.batch_size),
                                                                verbose=0, shuffle=False), 3),
    }
    print(f"{size} training and {held} validation images, batch {args.batch_size}; medians:")
    for name, seconds in rows.items():
        print(f"  {name:40s} {seconds:7.3f} s")


if __name__ == "__main__":
    main()
