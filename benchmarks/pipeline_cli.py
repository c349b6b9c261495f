"""What the benchmarks share: the argument parser and one `mnist-pipeline run` as a subprocess."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time


def parser(description: str, epochs: int) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--mirror", required=True)
    parser.add_argument("--dataset", default="mnist")
    parser.add_argument("--train-limit", type=int, default=5000)
    parser.add_argument("--epochs", type=int, default=epochs)
    return parser


def command(args: argparse.Namespace, store: str, epochs: int) -> list[str]:
    """The run command for the parsed options, against the artifact store `store`."""
    return [sys.executable, "-m", "ops.cli", "run", "--dataset", args.dataset, "--mirror", args.mirror,
            "--train-limit", str(args.train_limit), "--epochs", str(epochs),
            "--artifacts-dir", store, "--json"]


def run(cmd: list[str]) -> tuple[float, dict]:
    """Wall seconds of the command, and the run summary it printed last."""
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return time.perf_counter() - start, json.loads(done.stdout.strip().splitlines()[-1])
