"""Orchestration overhead: a cached rerun, and the time outside the stages of a short run.

    make serve    # then, from the project root:
    PYTHONPATH=. python benchmarks/overhead.py --mirror data/mnist --epochs 3

Measured side by side in one invocation, alternating, against one artifact store:
- `mnist-pipeline --help`;
- a fully cached rerun, reporting to the served Prefect server and, for
  comparison, to a temporary server of its own (what a run does without `make serve`);
- a run that trains (`--epochs`, a new seed each time, so download and
  preprocess come from the store): its wall time less the stages' own time.

"Stage" time is the stage task's wall time as the run summary gives it (the
task's Prefect bookkeeping included); "outside training" subtracts only the
training's epochs, so it counts everything else a run spends.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time

import pandas as pd

from pipeline_cli import command, parser


def _env(served: bool, home: str) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("PREFECT_API_URL", None)
    if not served:
        env["PREFECT_HOME"] = home  # no `make serve` recorded there: the run starts its own server
    return env


def _timed(cmd: list[str], env: dict[str, str]) -> tuple[float, dict]:
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{done.stderr[-2000:]}")
    return wall, json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    cli = parser(__doc__.splitlines()[0], epochs=3)
    cli.add_argument("--repeats", type=int, default=3)
    args = cli.parse_args()
    store = tempfile.mkdtemp(prefix="overhead-")
    home = tempfile.mkdtemp(prefix="overhead-home-")
    served_env = _env(True, home)
    if "server" not in subprocess.run([sys.executable, "-c", "from ops import temporary_server as server; print("
                                       "'server' if server.served_api_url() else '')"],
                                      capture_output=True, text=True, env=served_env).stdout:
        sys.exit("no `make serve` server answers for this PREFECT_HOME: start one first")

    rows = []
    base = command(args, store, args.epochs)
    _timed(base, served_env)  # fills the store
    for repeat in range(args.repeats):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "ops.cli", "--help"], capture_output=True, check=True)
        rows.append({"measure": "--help", "wall_s": time.perf_counter() - start})
        for served in ((True, False) if repeat % 2 == 0 else (False, True)):
            wall, summary = _timed(base, _env(served, home))
            assert {s["state"] for s in summary["stages"].values()} == {"Cached"}, summary["stages"]
            rows.append({"measure": f"cached rerun, {'served' if served else 'temporary'} server",
                         "wall_s": wall, "stage_s": sum(s["seconds"] for s in summary["stages"].values())})
        wall, summary = _timed(base + ["--seed", str(1000 + repeat)], served_env)
        stages = summary["stages"]
        rows.append({"measure": f"{args.epochs}-epoch run, served server", "wall_s": wall,
                     "stage_s": sum(s["seconds"] for s in stages.values()),
                     "epochs_s": sum(summary["train"]["epoch_seconds"])})

    table = pd.DataFrame(rows)
    table["outside_stages_s"] = table["wall_s"] - table["stage_s"]
    table["outside_training_s"] = table["wall_s"] - table["epochs_s"]
    medians = table.groupby("measure", sort=False).median()
    ranges = table.groupby("measure", sort=False)["wall_s"].agg(["min", "max"]).add_prefix("wall_")
    print(f"store {store}; {args.repeats} repeats, alternated; medians, and the range of wall times")
    print(medians.join(ranges).to_markdown(floatfmt=".2f"))
    cached = medians["wall_s"].filter(like="cached rerun")
    print("cached rerun, served / temporary server:", round(cached.iloc[0] / cached.iloc[1], 2))

if __name__ == "__main__":
    main()
