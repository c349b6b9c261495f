"""The `mnist-store-gc` flow: `mnist-pipeline gc --yes` on a schedule (prefect.yaml's `weekly-gc`), so a server
left alone for months keeps its store bounded."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from pydantic import Field

from flows import config
from flows.config import KeepRuns, OlderThanDays
from engine import inventory, remote
from engine.text import shown
from tasks import refs  # noqa: F401  the stages' entries, which gc looks after


@flow(name="mnist-store-gc")
def store_gc(artifacts_dir: Annotated[str, Field(min_length=1)] = config.DEFAULT_ARTIFACTS_DIR,
             keep_runs: KeepRuns = None, older_than_days: OlderThanDays = None) -> dict[str, Any]:
    """Remove the store's entries that no champion and none of the last `keep_runs` runs per dataset need.

    Args:
        artifacts_dir: The artifact store, on the worker.
        keep_runs: The last N runs of each dataset keep their entries; empty: MNIST_PIPELINE_GC_KEEP_RUNS (5).
        older_than_days: Remove only what is at least this many days old; empty: whatever its age.
    """
    config.PipelineConfig(artifacts_dir=artifacts_dir)  # the same allowed roots as a run's
    policy = config.GcPolicy(keep_runs=keep_runs, older_than_days=older_than_days)
    logger = get_run_logger()
    try:
        _, summary = inventory.clean(Path(remote.store_root(artifacts_dir)), policy.runs_kept,
                                     policy.older_than_days)
    except inventory.RunsInProgress as busy:
        # Not a failure: next week's run will find the store idle, or the one after.
        logger.info("%s; nothing removed this time", busy)
        return {"removed": 0, "runs_in_progress": True}
    for line in summary.pop("skipped_paths"):  # gone on past them, each logged
        logger.warning("skipped %s", shown(line))
    create_markdown_artifact(key="mnist-store-gc", markdown=(
        f"Removed {summary['removed']} paths, freed {summary['freed_bytes'] / 1e6:.1f} MB; the store now holds "
        f"{summary['store_bytes'] / 1e6:.1f} MB. Skipped: {summary['skipped']} (see the logs).\n"))
    return summary
