"""Wall time of a first run, an identical rerun and a rerun with one more epoch.

    python benchmarks/rerun.py --mirror /usr/share/datasets/fashion-mnist \
        --dataset fashion_mnist --train-limit 5000 --epochs 3

The three runs go one after another through the real command line, against a
fresh artifact store and the temporary Prefect server each command starts.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import pandas as pd

from pipeline_cli import command, parser, run


def main() -> None:
    args = parser(__doc__.splitlines()[0], epochs=3).parse_args()

    store = tempfile.mkdtemp(prefix="rerun-")
    rows = []
    for label, epochs in (("first run", args.epochs), ("identical rerun", args.epochs),
                          ("one more epoch", args.epochs + 1)):
        wall, summary = run(command(args, store, epochs))
        stages = summary["stages"]
        rows.append({"run": label, "wall_s": wall,
                     "stage_s": sum(s["seconds"] for s in stages.values()),
                     "states": " ".join(s["state"] for s in stages.values()),
                     "test_accuracy": summary["metrics"]["test_accuracy"]})
    table = pd.DataFrame(rows).set_index("run")
    table["wall_vs_first"] = table["wall_s"] / table["wall_s"].iloc[0]
    print(f"{args.dataset}, train_limit={args.train_limit}, epochs={args.epochs}, store {Path(store)}")
    print(table.to_markdown(floatfmt=".3f"))


if __name__ == "__main__":
    main()
