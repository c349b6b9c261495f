"""`mnist-sweep`: a grid trained on Dask, the data stages once, the best by validation accuracy to the gate."""

import json
import os
import re
import subprocess
import sys

import pandas as pd
import pytest

from flows import config
from ops import cli
from flows.config import SweepGrid
from tests.prefect_homes import prefect_home


def test_the_grid_is_every_combination_with_the_common_settings():
    grid = SweepGrid(learning_rates=[0.01, 0.001], batch_sizes=[16], seeds=[0, 1])
    runs = grid.configs(epochs=2, train_limit=64)
    assert list(runs) == ["lr=0.01 batch=16 seed=0", "lr=0.01 batch=16 seed=1",
                          "lr=0.001 batch=16 seed=0", "lr=0.001 batch=16 seed=1"]
    assert {(c.epochs, c.train_limit) for c in runs.values()} == {(2, 64)}
    assert runs["lr=0.001 batch=16 seed=1"].train.learning_rate == 0.001


@pytest.mark.parametrize("argv, message", [
    (["--learning-rates", "0"], "--learning-rates 0.0: Input should be greater than 0"),
    (["--batch-sizes", "0"], "--batch-sizes 0: Input should be greater than or equal to 1"),
    (["--epochs", "0"], "--epochs 0: Input should be greater than or equal to 1"),
    (["--learning-rates", *(f"0.0{n:02d}" for n in range(1, 21)), "--batch-sizes", *map(str, range(1, 21)),
      "--seeds", *map(str, range(20))],
     "the grid has 8000 combinations, more than the 64 one sweep may train "
     "(set MNIST_PIPELINE_SWEEP_MAX_COMBINATIONS to allow more)"),
])
def test_a_bad_grid_is_refused_in_one_line_before_prefect(argv, message, capsys):
    with pytest.raises(SystemExit) as exit:
        cli.validate(cli._parser().parse_args(["sweep", *argv]))
    assert exit.value.code == cli.EXIT_INVALID
    assert capsys.readouterr().err == f"mnist-pipeline: error: {message}\n"


def test_the_grids_limit_is_a_setting(monkeypatch):
    monkeypatch.setenv("MNIST_PIPELINE_SWEEP_MAX_COMBINATIONS", "3")
    with pytest.raises(ValueError, match="the grid has 4 combinations, more than the 3 one sweep may train"):
        SweepGrid(learning_rates=[0.01, 0.001], batch_sizes=[16, 32], seeds=[0])
    assert len(SweepGrid(learning_rates=[0.01], batch_sizes=[16, 32], seeds=[0]).configs()) == 2


@pytest.mark.e2e
def test_a_grid_over_the_limit_sent_to_the_flow_fails_before_any_stage(prefect_harness, tmp_path):
    from flows.sweep import mnist_sweep

    state = mnist_sweep(learning_rates=[0.1] * 9, batch_sizes=[16] * 9, seeds=[0], artifacts_dir=str(tmp_path),
                        return_state=True)
    assert state.is_failed() and state.message.startswith("the grid has 81 combinations, more than the 64")
    assert not any(tmp_path.iterdir())


def test_the_flows_parameters_are_the_grid_and_the_runs_settings_but_what_the_grid_sets():
    from flows.sweep import mnist_sweep

    names = set(mnist_sweep.parameters.properties)
    assert names == set(SweepGrid.model_fields) | set(config.PipelineConfig.model_fields) - config.GRID_FIELDS
    assert mnist_sweep.parameters.properties["learning_rates"]["type"] == "array"


@pytest.mark.e2e
def test_a_sweep_on_two_dask_workers_trains_the_grid_and_gates_the_best(tmp_path, mirror):
    env = {**os.environ, "PREFECT_HOME": str(prefect_home(tmp_path / "home")), "MNIST_PIPELINE_DASK_WORKERS": "2"}
    env.pop("PREFECT_API_URL", None)
    env.pop("MNIST_PIPELINE_DASK_DASHBOARD_PORT", None)
    command = [sys.executable, "-m", "ops.cli", "sweep", "--mirror", str(mirror), "--epochs", "1",
               "--learning-rates", "0.01", "0.001", "--json"]
    done = subprocess.run([*command, "--batch-sizes", "16"], capture_output=True, text=True, env=env, cwd=tmp_path,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    states = {stage: record["state"] for stage, record in summary["stages"].items()}
    trains = [stage for stage in states if stage.startswith("train[")]
    assert len(trains) == 2 and len(set(summary["stages"][s]["artifact"] for s in trains)) == 2
    assert set(states.values()) == {"Completed"}  # download and preprocess: once for both
    # The best is the most accurate on the validation split, and that is the model evaluated and gated.
    table = pd.read_csv(tmp_path / "artifacts" / "runs" / summary["flow_run_id"] / "sweep.csv")
    best = table.loc[table["validation_accuracy"].idxmax()]
    assert summary["sweep"]["best"] == best["combination"]
    assert summary["train"]["batch_size"] == best["batch_size"]
    assert summary["train"]["validation_accuracy"] == pytest.approx(best["validation_accuracy"])
    assert "test_accuracy" in summary["metrics"] and "passed" in summary["gate"]
    assert (tmp_path / "artifacts" / "runs" / summary["flow_run_id"] / "sweep.png").stat().st_size > 0
    # Dask says nothing below WARNING and opens no dashboard; the stages' hooks go unmentioned.
    assert not re.search(r"\| INFO +\| distributed\.", done.stderr), done.stderr[-3000:]
    assert "dashboard" not in done.stderr.lower() and "8787" not in done.stderr
    assert "count_attempts" not in done.stderr

    # The grid grown: the first combinations come from the store, the new ones are trained; each its own time.
    again = subprocess.run([*command, "--batch-sizes", "16", "32"], capture_output=True, text=True, env=env,
                           cwd=tmp_path, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    stages = json.loads(again.stdout.strip().splitlines()[-1])["stages"]
    assert stages["download"]["state"] == stages["preprocess"]["state"] == "Cached"
    cached = [record for stage, record in stages.items() if stage.startswith("train[") and "batch=16" in stage]
    computed = [record for stage, record in stages.items() if stage.startswith("train[") and "batch=32" in stage]
    assert [r["state"] for r in cached + computed] == ["Cached"] * 2 + ["Completed"] * 2
    assert max(r["seconds"] for r in cached) < min(5, *(r["seconds"] for r in computed))
    assert len({r["seconds"] for r in cached + computed}) == 4  # not the four's common wall time
    assert {r["attempts"] for r in cached + computed} == {1}
