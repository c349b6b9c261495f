"""What `make serve` and `make stop` do to the deployments beyond `prefect deploy`.

    python -m ops.deployments pool NAME   before `prefect deploy --all`
    python -m ops.deployments configure   after it
    python -m ops.deployments cancel      before the worker is stopped
    python -m ops.deployments tidy        beside the worker: what a crashed flow run left Running, Crashed
"""

from __future__ import annotations

import json
import sys
import time
from datetime import datetime, timedelta, timezone
from typing import Any

from prefect import get_client
from prefect.client.schemas.actions import DeploymentUpdate
from prefect.client.schemas.filters import DeploymentFilter, FlowFilter, FlowRunFilter
from prefect.client.schemas.objects import StateType
from prefect.states import Cancelled, Cancelling
from pydantic import ValidationError

from engine.text import shown
from flows import config
from engine.settings import env_name, settings

# The flows of prefect.yaml's deployments.
FLOWS = ["mnist-pipeline", "mnist-sweep", "mnist-store-gc"]
NIGHTLY_ENV = env_name("nightly")
ZOMBIES = "mnist-pipeline: crash flow runs whose process died"
_IN_FLIGHT = [StateType.PENDING, StateType.RUNNING, StateType.CANCELLING]


def nightly_parameters() -> dict:
    """MNIST_PIPELINE_NIGHTLY's parameters for `nightly` (offline, a mirror), refused in one line as a run would."""
    text = settings().nightly.strip()
    if not text:
        return {}
    try:
        parameters = json.loads(text)
        if not isinstance(parameters, dict):
            raise ValueError("not a JSON object")
        config.PipelineConfig(**parameters)
    except ValidationError as error:
        raise SystemExit(f"{NIGHTLY_ENV}: {config.describe(error)}") from None
    except ValueError as error:
        raise SystemExit(f"{NIGHTLY_ENV} is not a JSON object of parameters ({error})") from None
    return parameters


def work_pool(name: str) -> None:
    """The process work pool `name` unless it exists: `prefect work-pool inspect || create`, minus a 3 s CLI start."""
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectNotFound
    from prefect.workers.process import ProcessWorker

    from prefect.client.schemas.actions import WorkPoolUpdate

    with get_client(sync_client=True) as client:
        try:
            if client.read_work_pool(name).is_paused:  # by `make stop`, so the worker took no queued run
                client.update_work_pool(name, WorkPoolUpdate(is_paused=False))
        except ObjectNotFound:
            client.create_work_pool(WorkPoolCreate(name=name, type=ProcessWorker.type,
                                                   base_job_template=ProcessWorker.get_default_base_job_template()))


def configure() -> None:
    """Close each deployment's parameter schema (misspelt parameters are refused), set nightly's, add the automation."""
    nightly = nightly_parameters()
    with get_client(sync_client=True) as client:
        for deployment in _deployments(client):
            update = {"parameter_openapi_schema": {**deployment.parameter_openapi_schema,
                                                   "additionalProperties": False}}
            if deployment.name == "nightly" and nightly:
                update["parameters"] = {**deployment.parameters, **nightly}
            client.update_deployment(deployment.id, DeploymentUpdate(**update))
        if not client.read_automations_by_name(ZOMBIES):
            client.create_automation(_zombie_automation())
    if nightly:
        print(f"nightly runs with {json.dumps(nightly)}")


def _deployments(client) -> list:
    return client.read_deployments(flow_filter=FlowFilter(name={"any_": FLOWS}))


def _zombie_automation():
    """Prefect's way to mark Crashed a flow run whose process died: its heartbeats stop.

    The worker's flow runs send one every PREFECT_FLOWS_HEARTBEAT_FREQUENCY seconds
    (`make serve` sets 30); none for 90 s, and the run is marked Crashed.
    """
    from prefect.events.actions import ChangeFlowRunState
    from prefect.events.schemas.automations import AutomationCore, EventTrigger

    return AutomationCore(
        name=ZOMBIES,
        trigger=EventTrigger(
            after={"prefect.flow-run.heartbeat"},
            expect={"prefect.flow-run.heartbeat", "prefect.flow-run.Completed", "prefect.flow-run.Failed",
                    "prefect.flow-run.Cancelled", "prefect.flow-run.Crashed"},
            match={"prefect.resource.id": ["prefect.flow-run.*"]},
            for_each={"prefect.resource.id"},
            posture="Proactive",
            threshold=1,
            within=90,
        ),
        actions=[ChangeFlowRunState(state=StateType.CRASHED, message="its process stopped sending heartbeats")],
    )


def cancel_in_flight(pool: str, timeout_s: float = 15) -> int:
    """Cancel the runs in flight (Cancelled in the UI, not Crashed); those the worker is slow to end, marked so.
    The pool is paused first, so the worker takes no queued run while it stops; queued runs stay, named."""
    from prefect.client.schemas.actions import WorkPoolUpdate

    with get_client(sync_client=True) as client:
        client.update_work_pool(pool, WorkPoolUpdate(is_paused=True))
        of_ours = DeploymentFilter(id={"any_": [deployment.id for deployment in _deployments(client)]})
        queued = client.read_flow_runs(flow_run_filter=FlowRunFilter(state={"type": {"any_": [StateType.SCHEDULED]}}),
                                       deployment_filter=of_ours)
        for run in queued:
            if (run.state.state_details.scheduled_time or run.expected_start_time) <= datetime.now(timezone.utc):
                print(f"kept queued: flow run {shown(run.name)} ({run.id}); the next make serve starts it", flush=True)
        runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(state={"type": {"any_": _IN_FLIGHT}}),
                                     deployment_filter=of_ours)
        for run in runs:
            client.set_flow_run_state(run.id, Cancelling(message="make stop"), force=True)
            print(f"cancelled flow run {shown(run.name)} ({run.id})", flush=True)
        deadline = time.monotonic() + timeout_s
        while runs and time.monotonic() < deadline:
            time.sleep(0.5)
            runs = [run for run in runs if not client.read_flow_run(run.id).state.is_final()]
        for run in runs:
            client.set_flow_run_state(run.id, Cancelled(message="make stop"), force=True)
    return len(runs)


def tidy() -> None:
    """What the UI would show wrong, put right as it happens; follows the server's events (the last hour's first).

    - A flow run marked Crashed (its process killed outright) cannot report its task runs' end: those it left
      Running or Pending are marked Crashed too, unless it was retried meanwhile (its new attempt owns them).
    - A run due while the worker runs another (or created with others at once) waits for the worker's one
      slot: it shows as Prefect's AwaitingConcurrencySlot, naming the run it waits for, not as Late.
    """
    import anyio

    anyio.run(_tidy)


async def _tidy() -> None:
    from uuid import UUID

    import anyio
    from prefect.events.clients import get_events_subscriber
    from prefect.events.filters import EventFilter, EventNameFilter, EventOccurredFilter

    names = [f"prefect.flow-run.{name}" for name in ("Crashed", "Scheduled", "Late", "Pending")]
    wanted = EventFilter(event=EventNameFilter(name=names),
                         occurred=EventOccurredFilter(since=datetime.now(timezone.utc) - timedelta(hours=1)))
    async with get_events_subscriber(filter=wanted, reconnection_attempts=1_000_000) as events:
        async for event in events:
            flow_run_id = UUID(event.resource.id.rsplit(".", 1)[-1])
            handle = _crash_leftovers if event.event.endswith(".Crashed") else _hold_back
            said = await anyio.to_thread.run_sync(handle, flow_run_id, event.occurred)
            if said:
                print(said, flush=True)


# Prefect's words when a flow run's process ends under it (the worker stopped, the process killed): they do
# not say what happened to the run, nor that Retry resumes it.
_ENDED = ("Execution was aborted by", "Flow run infrastructure exited", "Process exited with status code")
RESUMES = "the flow run's process ended before the run did (its worker stopped, or it was killed); Retry resumes it"


def _crash_leftovers(flow_run_id: Any, crashed_at: Any) -> str:
    from prefect.states import Crashed

    from flows.runner import crash_leftover_task_runs

    with get_client(sync_client=True) as client:
        crashed = client.read_flow_run(flow_run_id).state
        if crashed.type != StateType.CRASHED:
            return ""  # retried since: its new attempt owns its task runs
        if (crashed.message or "").startswith(_ENDED):
            client.set_flow_run_state(flow_run_id, Crashed(message=f"{RESUMES} ({crashed.message.rstrip('.')})"),
                                      force=True)
    marked = crash_leftover_task_runs(
        flow_run_id, "its flow run crashed (its process ended without reporting); Retry resumes it", crashed_at)
    return f"marked Crashed {marked} task run(s) of crashed flow run {flow_run_id}" if marked else ""


def _hold_back(flow_run_id: Any, _: Any) -> str:
    """A run of ours due while the worker runs another waits for the worker's one slot: AwaitingConcurrencySlot,
    which the worker takes when free (and Prefect never marks Late). Judged as a run is created or goes Late,
    and for every run due, as one starts."""
    from prefect.states import Scheduled

    now = datetime.now(timezone.utc)
    with get_client(sync_client=True) as client:
        ours = DeploymentFilter(id={"any_": [deployment.id for deployment in _deployments(client)]})
        run = client.read_flow_run(flow_run_id)
        if run.deployment_id not in ours.id.any_ or run.state_type == StateType.SCHEDULED and run.state.name not in (
                "Scheduled", "Late"):
            return ""
        due = client.read_flow_runs(deployment_filter=ours, flow_run_filter=FlowRunFilter(
            state={"type": {"any_": [StateType.SCHEDULED]},
                   "name": {"any_": ["Scheduled", "Late", "AwaitingConcurrencySlot"]}},
            next_scheduled_start_time={"before_": now + timedelta(seconds=5)}))
        if run.state_type in (StateType.PENDING, StateType.RUNNING):
            holder = run
        else:
            running = client.read_flow_runs(deployment_filter=ours, flow_run_filter=FlowRunFilter(
                state={"type": {"any_": [StateType.PENDING, StateType.RUNNING]}}))
            holder, due = (running[0] if running else None), [waiting for waiting in due if waiting.id == run.id]
        if holder is None:
            return ""
        for waiting in (waiting for waiting in due if waiting.id != holder.id):
            client.set_flow_run_state(waiting.id, Scheduled(
                name="AwaitingConcurrencySlot", scheduled_time=now, message=(
                    f"waits for flow run {holder.name}, which the worker is running: one run at a time")), force=True)
    return "".join(f"flow run {shown(waiting.name)} waits for {shown(holder.name)}\n" for waiting in due
                   if waiting.id != holder.id).rstrip()


if __name__ == "__main__":
    try:
        {"pool": work_pool, "configure": configure, "cancel": cancel_in_flight, "tidy": tidy}[sys.argv[1]](*sys.argv[2:])
    except Exception as error:  # the API refused (401 without the credentials make serve had), or is gone
        sys.exit(f"{sys.argv[1]}: {shown(str(error).strip().splitlines()[0] if str(error).strip() else error)}")
