"""Runs the stages of one flow run and keeps the record the run summary is made of."""

from __future__ import annotations

import json
import shutil
import time
from contextlib import ExitStack
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional, Union

from prefect import Task, task
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run
from prefect.states import Completed, State

from flows.config import PipelineConfig
from tasks import report as reports
from engine import layout, locking, remote, runlog
from engine.champions import champion_lock
from flows import gate, logs
from engine.caching import EntryRecords
from flows.gate import GateResult
from engine.refs import EntryRef
from tasks.params import TrainParams
from tasks.refs import MetricsRef, ModelRef, ReportRef
from engine.retries import INTERRUPTED, PermanentError, TransientError
from engine.settings import settings
from engine.store import ArtifactStore, StoreError, store_errors, write_atomically

# The flow run's state when its model did not pass the quality gate.
NOT_PROMOTED = "NotPromoted"
# How many earlier runs of the same dataset a run's report compares against, and what it shows of each.
PREVIOUS_RUNS = 5
EARLIER_COLUMNS = ["epochs", "batch_size", "learning_rate", "validation_accuracy", "test_accuracy", "gate_verdict"]


# In every process that runs the stages (a Dask worker's too): no engine lines about the runner's hooks, and no
# Prefect traceback after a run that failed on purpose.
logs.quiet()

# The quality gate's verdict, a task of its own in the UI.
gate_model = task(gate.gate_model, cache_policy=NO_CACHE)


class StageFailed(RuntimeError):
    """A stage failed; the message names it and says why, in one sentence."""

    def __init__(self, stage: str, cause: BaseException, summary: dict[str, Any]):
        reason = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
        super().__init__(f"stage {stage} failed: {reason}")
        self.stage, self.cause, self.summary = stage, cause, summary


def crash_leftover_task_runs(flow_run_id: Any, message: str, started_before: Optional[datetime] = None) -> int:
    """Mark Crashed the task runs a flow run's process left Running or Pending (those that started before
    `started_before`, if given): a process killed outright (SIGKILL, a lost machine) cannot report their end,
    and the UI would show them running until a retry. How many it marked."""
    from prefect import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter, FlowRunFilterId, TaskRunFilter, TaskRunFilterState, TaskRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType
    from prefect.states import Crashed

    with get_client(sync_client=True) as client:
        leftovers = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])),
            task_run_filter=TaskRunFilter(state=TaskRunFilterState(
                type=TaskRunFilterStateType(any_=[StateType.RUNNING, StateType.PENDING]))),
        )
        leftovers = [run for run in leftovers if started_before is None
                     or (run.start_time or run.expected_start_time or started_before) < started_before]
        for task_run in leftovers:
            client.set_task_run_state(task_run.id, Crashed(message=message), force=True)
    return len(leftovers)


def task_run_times(ids: list[Any], wait_s: float = 15.0) -> dict[Any, tuple[float, int]]:
    """Each ended task run's own running time, in seconds (its tries', not the waits between them nor its
    queueing), and its count of tries, as the API records them, which is what the UI shows.

    The engine that ran a task in another process (a Dask worker) reports its states as events, which the server
    records a moment later: waits up to `wait_s` for every run's final state; those still missing are left out.
    """
    from prefect import get_client
    from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterId

    found: dict[Any, tuple[float, int]] = {}
    deadline = time.monotonic() + wait_s
    with get_client(sync_client=True) as client:
        while True:
            for task_run in client.read_task_runs(task_run_filter=TaskRunFilter(id=TaskRunFilterId(any_=ids))):
                if task_run.state is not None and task_run.state.is_final() and task_run.end_time is not None:
                    found[task_run.id] = (task_run.total_run_time.total_seconds(), max(1, task_run.run_count))
            if len(found) == len(set(ids)) or time.monotonic() > deadline:
                return found
            time.sleep(0.25)


def _stop_if_interrupted() -> None:
    """No stage starts once the run was interrupted, even if the interrupt was lost as another error."""
    if INTERRUPTED.is_set():
        raise KeyboardInterrupt


def is_expected(error: BaseException) -> bool:
    """An error this project raises on purpose: its message says all, its traceback helps nobody."""
    if isinstance(error, StageFailed):
        return is_expected(error.cause)
    return isinstance(error, (PermanentError, StoreError, TransientError))


class StageRunner:
    """Calls each stage with its results kept in the artifact store, and times it."""

    def __init__(self, artifacts_dir: str):
        # A store in S3 is read and written through its local copy.
        self.artifacts_dir = remote.store_root(artifacts_dir)
        # Before any stage: an unwritable store fails the run at once, in one sentence.
        self.store = ArtifactStore(self.artifacts_dir).open()
        # flock(2) in the store, or Redis when configured (locking.REDIS_URL_ENV).
        self.locks = locking.lock_manager(self.store.root / layout.LOCKS)
        self.records = EntryRecords(basepath=str(self.store.root))
        self.stages: dict[str, dict[str, Any]] = {}
        # Task run id: how many times it ran, as Prefect's hooks report it.
        self.attempts: dict[Any, int] = {}
        if (flow_run.run_count or 0) > 1:
            crash_leftover_task_runs(flow_run.id, "its flow run's process ended; the flow run was retried")

    def __enter__(self) -> "StageRunner":
        """The run is in progress: `mnist-pipeline gc` removes nothing until it ends (and it waits for a gc)."""
        self.in_progress = locking.run_in_progress(self.locks, self.store.identity)
        self.in_progress.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.in_progress.__exit__(*exc)

    def __getstate__(self) -> dict[str, Any]:
        # Pickled with the hooks of the tasks sent to other processes (Dask's workers):
        # the hold on the store stays with the run's own process.
        return {name: value for name, value in self.__dict__.items() if name != "in_progress"}

    def _bound(self, stage_task: Task) -> Task:
        bound = stage_task.with_options(
            # Runs with the same inputs at once compute each stage once; the others wait.
            cache_policy=stage_task.cache_policy.configure(isolation_level="SERIALIZABLE", lock_manager=self.locks),
            on_completion=[self.count_attempts], on_failure=[self.count_attempts])
        # Prefect's record of the result is the stage's entry in this run's store. Set
        # after construction: Task() takes only saved blocks, which a remote worker
        # could load; this storage serves this process only, as a `Path` would.
        bound.result_storage = self.records
        return bound

    def __call__(self, stage_task: Task, *args: Any) -> Any:
        _stop_if_interrupted()
        start = time.perf_counter()
        state = self._bound(stage_task)(self.artifacts_dir, *args, return_state=True)
        return self._record(stage_task.cache_policy.stage, state, time.perf_counter() - start)

    def map(self, stage_task: Task, runs: dict[str, tuple]) -> dict[str, Any]:
        """The stage once per entry of `runs` (label: arguments), through the flow's task runner (Dask's, say),
        each recorded as `stage[label]` with its own time and tries; a failure fails them all, once every run
        has ended."""
        from prefect.futures import as_completed

        _stop_if_interrupted()
        start = time.perf_counter()
        # Each task run named after its combination, in the UI and in its progress artifact.
        futures = {label: self._bound(stage_task.with_options(task_run_name=f"{stage_task.name}[{label}]")).submit(
                   self.artifacts_dir, *args) for label, args in runs.items()}
        # Until each run's own record arrives: from the submission to its end, waits for a free worker included.
        waited = {}
        for future in as_completed(list(futures.values())):
            future.wait()  # done: its final state, at hand
            waited[future.task_run_id] = time.perf_counter() - start
        own = task_run_times([future.task_run_id for future in futures.values()])
        for task_run_id, (seconds, attempts) in own.items():
            waited[task_run_id] = seconds
            # Its hooks ran in the worker's process, where this runner's count is not seen.
            self.attempts[task_run_id] = attempts
        return {label: self._record(f"{stage_task.cache_policy.stage}[{label}]", future.state,
                                    waited[future.task_run_id])
                for label, future in futures.items()}

    def _record(self, stage: str, state: State, seconds: float) -> Any:
        # A stage served from cache never runs its hooks: one attempt.
        record = self.stages[stage] = {"state": state.name, "seconds": round(seconds, 3),
                                       "attempts": self.attempts.pop(state.state_details.task_run_id, 1),
                                       "artifact": None}
        if not state.is_completed():  # Failed, or Crashed
            cause = state.result(raise_on_failure=False)
            raise StageFailed(stage, cause if isinstance(cause, BaseException) else RuntimeError(state.message),
                              self.summary("Failed"))
        ref: EntryRef = state.result()
        record["artifact"] = str(self.store.path(ref))
        return ref

    def count_attempts(self, task: Task, task_run: Any, state: State) -> None:
        """Prefect's hook on a stage's final state: its task run's count of tries."""
        self.attempts[task_run.id] = max(1, task_run.run_count)

    def summary(self, state: str = "Completed", model: Optional[ModelRef] = None,
                metrics: Optional[MetricsRef] = None, report: Optional[ReportRef] = None) -> dict[str, Any]:
        """The run summary of CONTRACT.md, as far as the run got."""
        summary: dict[str, Any] = {"flow_run_id": str(flow_run.id), "state": state, "stages": self.stages}
        # Every field of the references but the entry's name.
        if model is not None:
            summary["train"] = model.model_dump(exclude={"stage", "fingerprint"})
        if metrics is not None:
            summary["metrics"] = metrics.model_dump(exclude={"stage", "fingerprint"})
        if report is not None:
            summary["report"] = str(self.store.path(report) / reports.REPORT_HTML)
        return summary

    def finish(self, cfg: PipelineConfig, model: ModelRef, metrics: MetricsRef,
               report: ReportRef, **extra: Any) -> Union[dict[str, Any], State]:
        """The quality gate, this run's report and its line in the run log, then the promotion: the run summary
        with `extra`, as a state named NotPromoted if the gate refused the model.

        Under the champion's lock, so two runs finishing together take turns, and all or nothing: each step is
        undone (by removing or truncating, which needs no disk space) when a later one fails.
        """
        run_id = str(flow_run.id)
        folder = layout.run_folder(self.artifacts_dir, run_id)
        with champion_lock(self.locks, cfg.dataset), ExitStack() as undo, \
                store_errors(f"cannot record the run in the artifact store {self.store.root}"):
            verdict = gate_model(self.artifacts_dir, cfg.dataset, model, metrics, cfg.threshold)
            summary = self.summary(model=model, metrics=metrics, report=report)
            summary["gate"] = verdict.model_dump()
            summary.update(extra)  # what a flow adds to the summary (a sweep's comparison)
            # The stage's report with what only this run knows (stage times, earlier runs).
            undo.callback(shutil.rmtree, folder, ignore_errors=True)
            write_run_report(self.artifacts_dir, folder, report, model, metrics, cfg.train, cfg.dataset, verdict,
                             self.stages)
            summary["run_report"] = str(folder / reports.REPORT_HTML)
            line = {
                "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "flow_run_id": run_id,
                # The name the UI shows for it ("crimson-fox"), which `mnist-pipeline runs` lists.
                "run_name": flow_run.name,
                **cfg.model_dump(exclude={"artifacts_dir"}),
                # Which data the figures come from: the test split's short checksum, and the splits' sizes.
                "test_data": metrics.test_sha256[:12],
                "sizes": f"{model.train_count}/{model.validation_count if model.validated_on == 'validation' else 0}"
                         f"/{metrics.test_count}",
                "validation_accuracy": model.validation_accuracy,
                "test_accuracy": metrics.test_accuracy, "test_loss": metrics.test_loss,
                "gate_passed": verdict.passed, "gate_verdict": verdict.verdict, "gate_reason": verdict.reason,
                "stages": {stage: record["state"] for stage, record in self.stages.items()},
                # The entries it used, `<stage>/<fingerprint>`: what `mnist-pipeline gc` keeps for it.
                "entries": {stage: Path(record["artifact"]).relative_to(self.store.root).as_posix()
                            for stage, record in self.stages.items() if record["artifact"]},
            }
            with runlog.added(self.artifacts_dir, line, self.locks):  # taken back if the promotion fails
                if verdict.verdict == gate.PROMOTED:
                    gate.promote(self.artifacts_dir, cfg.dataset, model, metrics, run_id)
            undo.pop_all()  # all written: nothing to take back
        publish_report(self.artifacts_dir, folder, metrics, cfg.dataset, verdict)
        if verdict.passed:
            return summary
        # Completed, so nothing is retried; named, so the UI tells it from a promotion.
        return Completed(name=NOT_PROMOTED, message=f"not promoted: {verdict.reason}", data=summary)


def write_run_report(artifacts_dir: str, folder: Path, report: ReportRef, model: ModelRef, metrics: MetricsRef,
                     params: TrainParams, dataset: str, gate: GateResult, stages: dict[str, dict]) -> None:
    """This run's report in `folder`: the stage's, with a summary under its title (the gate's verdict and the
    run's parameters), and the stage times and earlier runs at its end."""
    entry = ArtifactStore(artifacts_dir).path(report)
    timing = [{"stage": stage, **{k: record[k] for k in ("state", "seconds", "attempts")}}
              for stage, record in stages.items()]
    title, _, body = (entry / reports.REPORT_MD).read_text().partition("\n")
    summary = reports.render("summary.md.j2", gate=gate, metrics=metrics, model=model, params=params.model_dump())
    # The best this run is compared with: every earlier run of the dataset on the same test data, not only those shown.
    logged = [run for run in runlog.records(artifacts_dir) if run["dataset"] == dataset]
    compared = [run.get("test_accuracy") for run in logged if run.get("test_data") == metrics.test_sha256[:12]]
    text = title + "\n" + summary + body + reports.render(
        "run.md.j2", gate=gate, timing=timing, dataset=dataset, metrics=metrics, compared=compared,
        earlier=_earlier_runs(logged) or None)
    folder.mkdir(parents=True, exist_ok=True)
    # The report's images beside it, so both pages read them by name.
    for image in entry.glob("*.png"):
        shutil.copyfile(image, folder / image.name)
    write_atomically(folder / reports.REPORT_MD, text)
    write_atomically(folder / reports.REPORT_HTML, reports.to_html(text, folder))


def _earlier_runs(logged: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The last of `logged` (a dataset's runs), a row each, narrow enough for the page; reruns of one model with
    the same result folded into one row, with their count and the last one's time."""
    rows: dict[tuple, dict[str, Any]] = {}
    for run in logged:
        # Compared as JSON text: a value of any type (a list in a hand-edited line) folds, or not, without failing.
        entries = run.get("entries")
        model = entries.get("train") if isinstance(entries, dict) else None
        same = tuple(json.dumps(value, sort_keys=True, default=str)
                     for value in (model or run.get("flow_run_id"), run.get("test_data"), run.get("test_accuracy")))
        folded = rows.pop(same, {"runs": 0})
        rows[same] = {"finished": run.get("finished"), **{column: run.get(column) for column in EARLIER_COLUMNS},
                      "runs": folded["runs"] + 1}
    return list(rows.values())[-PREVIOUS_RUNS:]


def report_link(path: Path) -> str:
    """Where a browser opens `path`: from `make serve`'s file server when it serves that store, else a file URI
    (which browsers refuse to open from a web page such as the Prefect UI)."""
    url, root = settings().reports_url, settings().reports_root
    if url and root:
        try:
            return f"{url.rstrip('/')}/{path.resolve().relative_to(Path(root).resolve()).as_posix()}"
        except ValueError:
            pass  # a store the file server does not serve
    return path.resolve().as_uri()


@task(cache_policy=NO_CACHE)
def publish_report(artifacts_dir: str, folder: Path, metrics: MetricsRef, dataset: str, gate: GateResult) -> None:
    """Show this run's report, its per-class scores and a link to its report.html in the Prefect UI."""
    from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact

    key = dataset.replace("_", "-")
    link = report_link(folder / reports.REPORT_HTML)
    headline = (f"**Test accuracy {metrics.test_accuracy:.4f}** (test split), test loss {metrics.test_loss:.4f}; "
                f"{gate.verdict}: {reports.as_text(gate.reason)}. "
                f"Full report with images: [report.html]({link})")
    # report.md shows every value as text, as report.html does. The UI cannot reach the store's
    # PNG files: images stay in report.html.
    lines = (folder / reports.REPORT_MD).read_text().splitlines()
    text = "\n".join(line for line in lines if not line.startswith("!["))
    create_markdown_artifact(key=f"{key}-report", markdown=f"{headline}\n\n{text}\n",
                             description="The pipeline's report (images in report.html).")
    # Markdown in the description: the Artifacts tab's card links to the report itself.
    create_link_artifact(key=f"{key}-report-html", link=link, link_text="report.html",
                         description=f"Open [report.html]({link}): this run's self-contained report.")
    create_table_artifact(key=f"{key}-metrics", table=metrics.at(artifacts_dir).per_class_rows(),
                          description=f"Per-class scores; test accuracy {metrics.test_accuracy:.4f}.")
