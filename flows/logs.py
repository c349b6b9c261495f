"""What Prefect and Dask log about the project's own machinery, held back where it tells a user nothing.

Installed on the loggers themselves (not on a handler), in every process that imports the flows: the
terminal, the flow run's logs in the UI (Prefect's API handler) and a Dask worker's stderr alike.
"""

from __future__ import annotations

import logging

# Prefect's loggers of a task run's and of a flow run's engine.
TASK_RUNS = "prefect.task_runs"
FLOW_RUNS = "prefect.flow_runs"
# prefect-dask's logger.
DASK_RUNNER = "prefect.task_runner.dask"
# The engine's line after a flow run ended Failed, as a worker runs it: with a traceback of Prefect's frames.
ENGINE_EXITED = "Engine execution exited with unexpected exception"
# The hooks of the stage runner (flows/runner.py): bookkeeping, nothing a user acts on.
OWN_HOOKS = ("count_attempts",)


class WithoutOwnHooks(logging.Filter):
    """Drops the engine's two lines about each run of the project's hooks; a hook's error still shows."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(message.startswith((f"Running hook {hook!r} in response", f"Hook {hook!r} finished"))
                       for hook in OWN_HOOKS)


class WithoutExpectedEngineTracebacks(logging.Filter):
    """Drops the engine's last word on a flow run that failed on purpose: the run's state already says why, in
    one line ("Finished in state Failed(...)"), and the stage's own error was logged where it happened."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.exc_info or record.getMessage() != ENGINE_EXITED:
            return True
        from prefect.exceptions import FailedRun

        from flows.runner import is_expected

        error = record.exc_info[1]
        # FailedRun: the flow returned a Failed state of its own (parameters it refused, in one line).
        return not (isinstance(error, FailedRun) or (error is not None and is_expected(error)))


class WithoutDashboardLink(logging.Filter):
    """Drops prefect-dask's line naming the Dask dashboard's address, for a cluster that has none."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("The Dask dashboard is available at")


def dashboard_named(named: bool) -> None:
    """Whether prefect-dask's line naming the local cluster's dashboard shows: only where there is one."""
    logger = logging.getLogger(DASK_RUNNER)
    for old in [f for f in logger.filters if isinstance(f, WithoutDashboardLink)]:
        logger.removeFilter(old)
    if not named:
        logger.addFilter(WithoutDashboardLink())


def quiet() -> None:
    """Install the filters above on Prefect's loggers (once), and keep Dask's `distributed` at WARNING."""
    for name, kind in ((TASK_RUNS, WithoutOwnHooks), (FLOW_RUNS, WithoutExpectedEngineTracebacks)):
        logger = logging.getLogger(name)
        if not any(isinstance(f, kind) for f in logger.filters):
            logger.addFilter(kind())
    # Its INFO lines (a cluster's start and end, each worker's comings and goings) reach Prefect's console
    # handler through the root logger; warnings and errors still do.
    distributed = logging.getLogger("distributed")
    if distributed.getEffectiveLevel() < logging.WARNING:
        distributed.setLevel(logging.WARNING)
