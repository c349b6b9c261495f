"""What the pipeline's processes keep out of the logs: the runner's hooks, Prefect's traceback after an expected
failure, Dask's INFO lines and its dashboard."""

import logging

import pytest

from flows import logs


def _record(logger: str, message: str, error: BaseException | None = None) -> logging.LogRecord:
    exc_info = (type(error), error, error.__traceback__) if error is not None else None
    return logging.getLogger(logger).makeRecord(logger, logging.INFO, __file__, 1, message, (), exc_info)


def _passes(logger: str, record: logging.LogRecord) -> bool:
    return all(f.filter(record) for f in logging.getLogger(logger).filters)


def test_the_engines_lines_about_the_runners_hooks_are_dropped_and_nothing_else(monkeypatch):
    import flows.runner  # noqa: F401  installs them, in every process that runs stages

    for line in ("Running hook 'count_attempts' in response to entering state 'Completed'",
                 "Hook 'count_attempts' finished running successfully"):
        assert not _passes(logs.TASK_RUNS, _record(logs.TASK_RUNS, line))
    for line in ("Finished in state Completed()", "Running hook 'notify' in response to entering state 'Failed'",
                 "An error was encountered while running hook 'count_attempts'"):
        assert _passes(logs.TASK_RUNS, _record(logs.TASK_RUNS, line))
    logs.quiet()  # again: once is enough
    assert sum(isinstance(f, logs.WithoutOwnHooks) for f in logging.getLogger(logs.TASK_RUNS).filters) == 1


def test_prefects_traceback_after_a_run_that_failed_on_purpose_is_dropped_and_after_a_bug_kept():
    from prefect.exceptions import FailedRun

    from engine.retries import PermanentError
    from flows.runner import StageFailed

    logs.quiet()
    refused = FailedRun("mirror /m has no train-images-idx3-ubyte")
    stage = StageFailed("download", PermanentError("a malformed file"), {})
    bug = StageFailed("train", ZeroDivisionError("division by zero"), {})
    for error in (refused, stage, PermanentError("x")):
        assert not _passes(logs.FLOW_RUNS, _record(logs.FLOW_RUNS, logs.ENGINE_EXITED, error))
    assert _passes(logs.FLOW_RUNS, _record(logs.FLOW_RUNS, logs.ENGINE_EXITED, bug))
    assert _passes(logs.FLOW_RUNS, _record(logs.FLOW_RUNS, "Finished in state Failed('x')", refused))


def test_dask_is_quiet_below_warning_and_its_dashboard_off_unless_asked_for_then_on_loopback(monkeypatch):
    from flows import sweep

    sweep.task_runner()
    assert logging.getLogger("distributed").getEffectiveLevel() == logging.WARNING
    assert not _passes(logs.DASK_RUNNER, _record(logs.DASK_RUNNER, "The Dask dashboard is available at http://x"))
    off = sweep.cluster_kwargs(2, None)
    assert off["silence_logs"] == logging.WARNING and off["host"] == "127.0.0.1"
    # No dashboard; the scheduler's health page on loopback, at a port of the system's choosing (not 8787).
    assert off["scheduler_kwargs"] == {"dashboard": False, "dashboard_address": "127.0.0.1:0"}
    monkeypatch.setenv("MNIST_PIPELINE_DASK_DASHBOARD_PORT", "8790")
    runner = sweep.task_runner()
    assert runner.cluster_kwargs["scheduler_kwargs"] == {"dashboard": True, "dashboard_address": "127.0.0.1:8790"}
    assert _passes(logs.DASK_RUNNER, _record(logs.DASK_RUNNER, "The Dask dashboard is available at http://x"))
    monkeypatch.delenv("MNIST_PIPELINE_DASK_DASHBOARD_PORT")
    sweep.task_runner()  # as the process had it


def test_the_dashboards_port_is_a_setting_checked_like_the_others(monkeypatch):
    from engine.settings import SettingsError, settings

    monkeypatch.setenv("MNIST_PIPELINE_DASK_DASHBOARD_PORT", "70000")
    with pytest.raises(SettingsError, match="MNIST_PIPELINE_DASK_DASHBOARD_PORT='70000'"):
        settings()


def test_tensorflows_onednn_note_is_passed_on_once_in_a_process_and_its_errors_always(capfd, monkeypatch):
    import os

    from tasks import runtime

    monkeypatch.setattr(runtime, "_noted", [])
    note = b"I0000 port.cc:153] oneDNN custom operations are on. You may see slightly different results\n"
    for _ in range(2):
        with runtime._without_no_driver_noise():
            os.write(2, note + note + b"E0000 something went wrong\n")
    err = capfd.readouterr().err
    assert err.count("oneDNN custom operations are on") == 1 and err.count("something went wrong") == 2
