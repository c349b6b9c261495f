"""Test accuracy and training time of batch size / learning rate pairs, side by side.

    python benchmarks/tune_defaults.py --mirror /usr/share/datasets/fashion-mnist \
        --train-limit 3000 --epochs 3 --seeds 0 1 [--settings 32:0.002:cosine ...]

Each setting trains through the pipeline's own stage functions (no Prefect), on
the same data, in one process, one after another.
"""

from __future__ import annotations

import argparse
import itertools
import tempfile
from pathlib import Path

import pandas as pd

from flows.stages import download_dataset, evaluate_model, preprocess_dataset, train_model
from tasks.params import TrainParams

SETTINGS = ["32:0.001:constant", "32:0.002:constant", "32:0.002:cosine", "32:0.004:cosine", "64:0.004:cosine"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mirror", required=True)
    parser.add_argument("--dataset", default="fashion_mnist")
    parser.add_argument("--train-limit", type=int)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--settings", nargs="+", metavar="BATCH:RATE:SCHEDULE", default=SETTINGS)
    args = parser.parse_args()
    settings = [(int(b), float(r), schedule) for b, r, schedule in (s.split(":") for s in args.settings)]

    store = tempfile.mkdtemp(prefix="tune-")
    data = preprocess_dataset.fn(store, download_dataset.fn(store, args.dataset, args.mirror), args.train_limit)
    rows = []
    for (batch, rate, schedule), seed in itertools.product(settings, args.seeds):
        params = TrainParams(epochs=args.epochs, batch_size=batch, learning_rate=rate, lr_schedule=schedule,
                             seed=seed)
        model = train_model.fn(store, data, params)
        metrics = evaluate_model.fn(store, model, data)
        rows.append({"batch_size": batch, "learning_rate": rate, "lr_schedule": schedule, "seed": seed,
                     "test_accuracy": metrics.test_accuracy, "seconds_per_epoch": sum(model.epoch_seconds) / model.epochs_run})
        print(rows[-1], flush=True)
    table = pd.DataFrame(rows).groupby(["batch_size", "learning_rate", "lr_schedule"], sort=False).agg(
        test_accuracy=("test_accuracy", "mean"), worst=("test_accuracy", "min"),
        seconds_per_epoch=("seconds_per_epoch", "mean"))
    print(f"\n{args.dataset}, train_limit={args.train_limit}, epochs={args.epochs}, seeds={args.seeds}, store {Path(store)}")
    print(table.to_markdown(floatfmt=".4f"))


if __name__ == "__main__":
    main()
