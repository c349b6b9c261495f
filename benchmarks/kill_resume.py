"""A run killed with SIGKILL during epoch 3, resumed, against an uninterrupted run.

    python benchmarks/kill_resume.py --mirror /usr/share/datasets/fashion-mnist \
        --dataset fashion_mnist --train-limit 5000 --epochs 5
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile


def command(args: argparse.Namespace, store: str) -> list[str]:
    return [sys.executable, "-m", "flows.cli", "run", "--dataset", args.dataset, "--mirror", args.mirror,
            "--train-limit", str(args.train_limit), "--epochs", str(args.epochs),
            "--artifacts-dir", store, "--json"]


def summary(cmd: list[str]) -> dict:
    done = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mirror", required=True)
    parser.add_argument("--dataset", default="mnist")
    parser.add_argument("--train-limit", type=int, default=5000)
    parser.add_argument("--epochs", type=int, default=5)
    args = parser.parse_args()

    whole = summary(command(args, tempfile.mkdtemp(prefix="whole-")))
    store = tempfile.mkdtemp(prefix="killed-")
    doomed = subprocess.Popen(command(args, store), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              text=True, start_new_session=True)
    for line in doomed.stderr:
        if "epoch 2/" in line:
            # Kill in the middle of epoch 3, not at its start.
            seconds = float(line.rsplit(" - ", 1)[1].rstrip("s\n"))
            try:
                doomed.wait(timeout=seconds / 2)
            except subprocess.TimeoutExpired:
                os.killpg(doomed.pid, signal.SIGKILL)
            break
    doomed.wait()
    resumed = summary(command(args, store))
    print(json.dumps({
        "killed_exit": doomed.returncode,
        "resumed_states": {k: v["state"] for k, v in resumed["stages"].items()},
        "resumed_train": {k: resumed["train"][k] for k in ("resumed_from_epoch", "epochs_run")},
        "accuracy_uninterrupted": whole["metrics"]["test_accuracy"],
        "accuracy_resumed": resumed["metrics"]["test_accuracy"],
    }, indent=1))


if __name__ == "__main__":
    main()
