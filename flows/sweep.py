"""The `mnist-sweep` flow: one download and preprocess, a grid of cached trainings on Dask, the best (by
validation accuracy) evaluated on the test split, reported and offered to the gate as a run of its own would be."""

from __future__ import annotations

import logging
from typing import Any, Optional

from prefect import Flow, task
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run
from prefect.states import Failed
from prefect_dask import DaskTaskRunner
from pydantic import ValidationError

from flows import config, logs
from flows.config import GRID_FIELDS, PipelineConfig, SweepGrid
from flows.runner import StageRunner, report_link
from flows.stages import build_report, download_dataset, evaluate_model, preprocess_dataset, train_model
from engine import layout
from engine.settings import settings

TABLE_CSV = "sweep.csv"
PLOT_PNG = "sweep.png"


def task_runner() -> DaskTaskRunner:
    """An existing Dask scheduler when one is named, else a local cluster of single-threaded worker processes."""
    dask = settings()
    logs.quiet()  # `distributed` at WARNING in this process (its scheduler's); silence_logs does the workers'
    if dask.dask_address:
        return DaskTaskRunner(address=dask.dask_address)
    # prefect-dask names the dashboard's address whether there is one or not.
    logs.dashboard_named(dask.dask_dashboard_port is not None)
    return DaskTaskRunner(cluster_kwargs=cluster_kwargs(dask.dask_workers, dask.dask_dashboard_port))


def cluster_kwargs(workers: int, dashboard_port: Optional[int]) -> dict[str, Any]:
    """The local cluster: `workers` processes of one thread each (TensorFlow uses the cores itself, and its state
    is per process), quiet below WARNING, on loopback only; its dashboard at 127.0.0.1:`dashboard_port`, or none."""
    # Without a dashboard the scheduler still serves its health and metrics pages: on a port of its own
    # choosing, not on 8787, which another cluster or a user's dashboard may hold.
    address = f"127.0.0.1:{dashboard_port or 0}"
    return {"n_workers": workers, "threads_per_worker": 1, "processes": True, "host": "127.0.0.1",
            "silence_logs": logging.WARNING, "dashboard_address": address,
            "scheduler_kwargs": {"dashboard": dashboard_port is not None, "dashboard_address": address}}


def comparison(models: dict[str, Any], runs: dict[str, PipelineConfig], stages: dict[str, dict]) -> Any:
    """One row per combination: its settings, validation figures and training time, best first."""
    import pandas as pd

    rows = [{"combination": label, "learning_rate": runs[label].learning_rate,
             "batch_size": runs[label].batch_size, "seed": runs[label].seed,
             "validation_accuracy": model.validation_accuracy, "validation_loss": model.validation_loss,
             "train_seconds": round(sum(model.epoch_seconds), 1), "state": stages[f"train[{label}]"]["state"]}
            for label, model in models.items()]
    return pd.DataFrame(rows).sort_values("validation_accuracy", ascending=False, kind="stable")


@task(cache_policy=NO_CACHE)
def publish_comparison(table: Any, folder: Any, dataset: str) -> None:
    """The comparison as a table artifact, and as a plot beside the run's report, linked from a markdown artifact."""
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    from tasks import plots

    folder.mkdir(parents=True, exist_ok=True)
    table.to_csv(folder / TABLE_CSV, index=False)
    plots.sweep_bars(table, folder / PLOT_PNG)
    key = f"{dataset.replace('_', '-')}-sweep"
    create_table_artifact(key=key, table=table.round(4).to_dict(orient="records"),
                          description="Every combination of the sweep, best validation accuracy first.")
    create_markdown_artifact(key=f"{key}-summary", markdown=(
        f"**Best: {table.iloc[0]['combination']}**, validation accuracy {table.iloc[0]['validation_accuracy']:.4f} "
        f"(validation split); offered to the quality gate. [Plot]({report_link(folder / PLOT_PNG)})\n\n"
        + table.round(4).to_markdown(index=False) + "\n"))


def mnist_sweep(**parameters: Any) -> Any:
    """Train every combination of the grid on Dask; evaluate, report and gate the best by validation accuracy."""
    grid_fields = {name: parameters.pop(name) for name in SweepGrid.model_fields}
    try:
        grid = SweepGrid(**grid_fields)
        runs = grid.configs(**{**parameters, "mirror": parameters.get("mirror") or None})
    except ValidationError as error:
        return Failed(message=config.describe(error))
    first = next(iter(runs.values()))
    with StageRunner(first.artifacts_dir) as run:
        raw = run(download_dataset, first.dataset, first.mirror)
        data = run(preprocess_dataset, raw, first.train_limit, first.validation_split)
        models = run.map(train_model, {label: (data, cfg.train) for label, cfg in runs.items()})
        table = comparison(models, runs, run.stages)
        best = table.iloc[0]["combination"]
        publish_comparison(table, layout.run_folder(run.artifacts_dir, str(flow_run.id)), first.dataset)
        metrics = run(evaluate_model, models[best], data)
        report = run(build_report, raw, data, models[best], metrics, runs[best].train)
        return run.finish(runs[best], models[best], metrics, report,
                          sweep={"best": best, "combinations": table.to_dict(orient="records")})


mnist_sweep = Flow(config.with_parameters(mnist_sweep, SweepGrid, PipelineConfig, exclude=GRID_FIELDS),
                       name="mnist-sweep", task_runner=task_runner())
