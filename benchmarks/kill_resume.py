"""A run killed with SIGKILL during epoch 3, resumed, against an uninterrupted run.

    python benchmarks/kill_resume.py --mirror /usr/share/datasets/fashion-mnist \
        --dataset fashion_mnist --train-limit 5000 --epochs 5
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import tempfile

from pipeline_cli import command, parser, run


def main() -> None:
    args = parser(__doc__.splitlines()[0], epochs=5).parse_args()

    _, whole = run(command(args, tempfile.mkdtemp(prefix="whole-"), args.epochs))
    store = tempfile.mkdtemp(prefix="killed-")
    doomed = subprocess.Popen(command(args, store, args.epochs), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
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
    _, resumed = run(command(args, store, args.epochs))
    print(json.dumps({
        "killed_exit": doomed.returncode,
        "resumed_states": {k: v["state"] for k, v in resumed["stages"].items()},
        "resumed_train": {k: resumed["train"][k] for k in ("resumed_from_epoch", "epochs_run")},
        "accuracy_uninterrupted": whole["metrics"]["test_accuracy"],
        "accuracy_resumed": resumed["metrics"]["test_accuracy"],
    }, indent=1))


if __name__ == "__main__":
    main()
