"""Validation accuracy and training time of recipes, side by side: how the default recipe is chosen.

    python benchmarks/tune_defaults.py --mirror /usr/share/datasets/fashion-mnist --seeds 0 1 2 \
        [--settings BATCH:RATE:SCHEDULE:EPOCHS ...]

Each recipe trains through the pipeline's own stages (no Prefect) on the same
data, in one process, one after another, and is scored on the validation split
(the last 10% of the training images): the test split is never read here.
The first setting is the tutorial's (batch 32, Adam 1e-3 constant, 10 epochs), the baseline.
"""

from __future__ import annotations

import argparse
import itertools
import tempfile
from pathlib import Path

import pandas as pd

from flows.config import train_params
from flows.stages import download_dataset, preprocess_dataset, train_model

SETTINGS = ["32:0.001:constant:10", "128:0.004:cosine:4", "256:0.006:cosine:4", "256:0.008:cosine:5"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mirror", required=True)
    parser.add_argument("--dataset", default="fashion_mnist")
    parser.add_argument("--train-limit", type=int)
    parser.add_argument("--validation-split", type=float, default=0.1)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--settings", nargs="+", metavar="BATCH:RATE:SCHEDULE:EPOCHS", default=SETTINGS)
    args = parser.parse_args()
    settings = [(int(b), float(r), s, int(e)) for b, r, s, e in (text.split(":") for text in args.settings)]

    store = tempfile.mkdtemp(prefix="tune-")
    raw = download_dataset.fn(store, args.dataset, args.mirror)
    data = preprocess_dataset.fn(store, raw, args.train_limit, args.validation_split)
    rows = []
    for seed, (batch, rate, schedule, epochs) in itertools.product(args.seeds, settings):
        params = train_params(epochs=epochs, batch_size=batch, learning_rate=rate, lr_schedule=schedule, seed=seed)
        model = train_model.fn(store, data, params)
        rows.append({"setting": f"{batch}:{rate}:{schedule}:{epochs}", "seed": seed,
                     "validation_accuracy": model.validation_accuracy, "train_s": sum(model.epoch_seconds)})
        print(rows[-1], flush=True)
    table = pd.DataFrame(rows).groupby("setting", sort=False).agg(
        validation_accuracy=("validation_accuracy", "mean"), worst=("validation_accuracy", "min"),
        train_s=("train_s", "mean"))
    table["time_vs_first"] = table["train_s"] / table["train_s"].iloc[0]
    print(f"\n{args.dataset}, train_limit={args.train_limit}, validation split {args.validation_split} "
          f"({data.validation_count} images), seeds={args.seeds}, store {Path(store)}")
    print(table.to_markdown(floatfmt=".4f"))


if __name__ == "__main__":
    main()
