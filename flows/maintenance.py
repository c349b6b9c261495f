"""The `mnist-store-gc` flow: `mnist-pipeline gc --yes` with the default policy, on a schedule.

prefect.yaml's `weekly-gc` deployment runs it every Sunday at 03:00 UTC, so a
server left alone for months keeps its store bounded: each champion's lineage
and the last `keep_runs` runs of each dataset stay, the rest goes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from pydantic import Field

from flows import config
from tasks.engine import inventory, remote
from tasks.engine.settings import settings


@flow(name="mnist-store-gc")
def store_gc(artifacts_dir: Annotated[str, Field(min_length=1)] = config.DEFAULT_ARTIFACTS_DIR,
             keep_runs: Annotated[Optional[int], Field(ge=0, le=1_000_000)] = None,
             older_than_days: Annotated[float, Field(ge=0)] = 0.0) -> dict[str, Any]:
    """Remove the store's entries that no champion and none of the last `keep_runs` runs per dataset need.

    Args:
        artifacts_dir: The artifact store, on the worker.
        keep_runs: The last N runs of each dataset keep their entries; empty: MNIST_PIPELINE_GC_KEEP_RUNS (5).
        older_than_days: Remove only what is at least this many days old.
    """
    config.PipelineConfig(artifacts_dir=artifacts_dir)  # the same allowed roots as a run's
    keep_runs = settings().gc_keep_runs if keep_runs is None else keep_runs
    _, summary = inventory.clean(Path(remote.store_root(artifacts_dir)), keep_runs, older_than_days or None)
    for line in summary.pop("in_use"):
        get_run_logger().info("skipped %s", line)
    if "runs_in_progress" in summary:
        # Not a failure: next week's run will find the store idle, or the one after.
        get_run_logger().info("%s; nothing removed this time", summary["runs_in_progress"])
        return {**summary, "runs_in_progress": True}
    create_markdown_artifact(key="mnist-store-gc", markdown=(
        f"Removed {summary['removed']} paths, freed {summary['freed_bytes'] / 1e6:.1f} MB; the store now holds "
        f"{summary['store_bytes'] / 1e6:.1f} MB. Skipped (in use): {summary['skipped']}.\n"))
    return summary
