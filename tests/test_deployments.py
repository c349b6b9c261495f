"""The pipeline as people operate it: `make serve`'s server, deployments and worker.

One server, work pool, set of deployments and worker for the module, started by
scripts/serve.sh on a free loopback port and stopped by it at the end.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from flows.config import TINY
from flows.server import free_port
from tests.prefect_homes import prefect_home

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parent.parent
STAGE_TASKS = ["download_dataset", "preprocess_dataset", "train_model", "evaluate_model", "build_report"]
FINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


def _serve(command: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(ROOT / "scripts/serve.sh"), command], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=240)


@contextmanager
def _served(home: Path, fresh: bool = False, **extra_env: str):
    """`make serve` in `home`, stopped after; its database migrated beforehand unless `fresh` (or on PostgreSQL)."""
    if not fresh and extra_env.get("DB") != "postgres":
        prefect_home(home)
    port = free_port()
    env = {**os.environ, "PREFECT_HOME": str(home), "PORT": str(port), "REPORTS_PORT": str(free_port()),
           "BIN": str(Path(sys.executable).parent), "PREFECT_WORKER_QUERY_SECONDS": "1",
           # The tests' mirrors and stores live under pytest's temporary folder.
           "MNIST_PIPELINE_ALLOWED_ROOTS": str(home.parent.parent),
           # The store whose reports the file server serves, instead of the project's.
           "MNIST_PIPELINE_REPORTS_ROOT": str(home / "artifacts"), **extra_env}
    env.pop("PREFECT_API_URL", None)
    started = _serve("start", env)
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        assert f"http://127.0.0.1:{port}" in started.stdout
        yield {"url": f"http://127.0.0.1:{port}", "env": env, "home": home, "store": home / "artifacts"}
    finally:
        pids = [int(p.read_text()) for p in (home / "run").glob("*.pid")]
        stopped = _serve("stop", env)
        assert stopped.returncode == 0, stopped.stderr
        assert not list((home / "run").glob("*.pid"))
        for pid in pids:  # each process group, children included, has ended
            assert not [member for member in _members(pid) if _running(member)]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    # The first start a user sees: an empty home, its database created and migrated.
    with _served(tmp_path_factory.mktemp("served-prefect-home"), fresh=True) as server:
        yield server


class _PatientClient(httpx.Client):
    """Retries 503s, as Prefect's own client does: SQLite answers so under concurrent writes."""

    def request(self, *args, **kwargs) -> httpx.Response:
        for _ in range(10):
            response = super().request(*args, **kwargs)
            if response.status_code != 503:
                break
            time.sleep(1)
        return response


@pytest.fixture(scope="module")
def api(served):
    with _PatientClient(base_url=f"{served['url']}/api", timeout=30) as client:
        yield client


def _deployment(api: httpx.Client, name: str) -> dict:
    found = [d for d in api.post("/deployments/filter", json={}).json() if d["name"] == name]
    assert len(found) == 1, f"expected one deployment {name}"
    return found[0]


def _wait(api: httpx.Client, run_id: str, timeout: float = 180) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = api.get(f"/flow_runs/{run_id}").json()
        if run["state"]["type"] in FINAL:
            return run
        time.sleep(1)
    raise AssertionError(f"flow run {run_id} still {run['state']['name']} after {timeout} s")


def _stage_states(api: httpx.Client, run_id: str) -> dict[str, str]:
    """The latest state name of each stage's task run in a flow run."""
    runs = api.post("/task_runs/filter", json={"flow_runs": {"id": {"any_": [run_id]}},
                                                "sort": "EXPECTED_START_TIME_ASC"}).json()
    return {run["task_key"].rsplit("-", 1)[0]: (run["state"] or {}).get("name") for run in runs
            if run["task_key"].rsplit("-", 1)[0] in STAGE_TASKS}


def _tiny(mirror: Path, store: Path, **overrides) -> dict:
    return {"mirror": str(mirror), "artifacts_dir": str(store), **TINY, **overrides}


def test_serve_lists_both_deployments_with_the_nightly_schedule(api):
    nightly = _deployment(api, "nightly")
    assert nightly["enforce_parameter_schema"] is True
    schedule = nightly["schedules"][0]["schedule"]
    assert schedule["cron"] == "0 2 * * *" and schedule["timezone"]
    assert _deployment(api, "on-demand")["schedules"] == []
    assert api.get("/work_pools/local-process").json()["type"] == "process"
    # Prefect's zombie-run detection: a flow run whose heartbeats stop is marked Crashed.
    from flows.deployments import ZOMBIES

    assert ZOMBIES in [a["name"] for a in api.post("/automations/filter", json={}).json()]


def test_serve_twice_keeps_one_of_each(served, api):
    pids = {p.name: p.read_text() for p in (served["home"] / "run").glob("*.pid")}
    again = _serve("start", served["env"])
    assert again.returncode == 0, again.stderr
    assert {p.name: p.read_text() for p in (served["home"] / "run").glob("*.pid")} == pids
    assert sorted(d["name"] for d in api.post("/deployments/filter", json={}).json()) == ["nightly", "on-demand", "sweep", "weekly-gc"]


def test_on_demand_run_completes_with_its_parameters(api, mirror, tmp_path):
    params = _tiny(mirror, tmp_path / "artifacts", epochs=2)
    run = api.post(f"/deployments/{_deployment(api, 'on-demand')['id']}/create_flow_run",
                   json={"parameters": params}).json()
    done = _wait(api, run["id"])
    assert done["state"]["type"] == "COMPLETED", done["state"]
    assert done["parameters"]["epochs"] == 2
    assert set(_stage_states(api, run["id"]).values()) == {"Completed"}
    trained = list((tmp_path / "artifacts" / "train").glob("*/history.csv"))
    assert len(trained) == 1 and len(trained[0].read_text().splitlines()) == 1 + 2


@pytest.mark.parametrize("bad, message", [
    ({"epochs": 0}, "0 is less than the minimum of 1"),
    ({"dataset": "cifar10"}, "'cifar10' is not one of"),
    ({"learning_rate": -0.1}, "less than or equal to the minimum of 0"),
    ({"epoch": 3}, "Additional properties are not allowed ('epoch' was unexpected)"),
    ({"seed": 2 ** 32}, "4294967296 is greater than the maximum of 4294967295"),
    ({"artifacts_dir": ""}, "'' should be non-empty"),
])
def test_bad_parameters_are_refused_when_the_run_is_created(api, bad, message):
    answer = api.post(f"/deployments/{_deployment(api, 'on-demand')['id']}/create_flow_run",
                      json={"parameters": bad})
    assert answer.status_code == 409
    assert message in answer.json()["detail"]


def test_paths_outside_the_allowed_roots_are_refused(api, mirror):
    run = api.post(f"/deployments/{_deployment(api, 'on-demand')['id']}/create_flow_run",
                   json={"parameters": _tiny(mirror, Path("/etc/mnist-artifacts"))}).json()
    failed = _wait(api, run["id"])
    assert failed["state"]["type"] == "FAILED"
    assert failed["state"]["message"].startswith(
        "artifacts_dir /etc/mnist-artifacts is outside the folders this worker allows (")
    assert failed["state"]["message"].endswith(
        "; to allow it, add its folder to MNIST_PIPELINE_ALLOWED_ROOTS (folders separated by ':') before `make serve`")
    assert not Path("/etc/mnist-artifacts").exists()


def test_ui_retry_reruns_only_the_failed_stage_and_after(api, mirror, tmp_path):
    store = tmp_path / "artifacts"
    store.mkdir()
    (store / "train").write_text("a file where the train stage's folder must go")
    run = api.post(f"/deployments/{_deployment(api, 'on-demand')['id']}/create_flow_run",
                   json={"parameters": _tiny(mirror, store)}).json()
    failed = _wait(api, run["id"])
    assert failed["state"]["type"] == "FAILED"
    assert "stage train failed" in failed["state"]["message"]

    (store / "train").unlink()  # the cause, repaired
    # What the UI's Retry button sends.
    answer = api.post(f"/flow_runs/{run['id']}/set_state", json={
        "state": {"type": "SCHEDULED", "name": "AwaitingRetry", "message": "Retry from the UI"},
        "force": True,
    })
    assert answer.status_code == 201
    retried = _wait(api, run["id"])
    assert retried["state"]["type"] == "COMPLETED", retried["state"]
    assert retried["run_count"] == 2
    states = _stage_states(api, run["id"])
    assert states["download_dataset"] == states["preprocess_dataset"] == "Cached"
    assert states["train_model"] == states["evaluate_model"] == states["build_report"] == "Completed"


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    """Debian's chromium, headless, driven by Playwright (its own browser download cannot work here)."""
    chromium = shutil.which("chromium")
    if chromium is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is missing: .ci/run installs it through `make test`")
        pytest.skip("Debian's chromium is not installed (make system-deps)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")), executable_path=chromium, headless=True,
            viewport={"width": 1400, "height": 900},
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"],
        )
        yield context
        context.close()


def _screenshot(page, name: str) -> None:
    shots = ROOT / "build" / "test-artifacts"
    shots.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(shots / name))


def test_quick_run_from_the_browser(served, api, browser, mirror, tmp_path):
    deployment = _deployment(api, "on-demand")
    # Quick run takes the deployment's defaults: point them at the tiny mirror.
    api.patch(f"/deployments/{deployment['id']}",
              json={"parameters": _tiny(mirror, tmp_path / "artifacts")}).raise_for_status()
    before = {r["id"] for r in api.post("/flow_runs/filter", json={}).json()}
    page = browser.new_page()
    page.goto(f"{served['url']}/v2/deployments/deployment/{deployment['id']}")
    toast = _quick_run(page)
    if "error" in toast.lower():
        # SQLite can answer 503 while the scheduler or a finishing run writes; a person clicks again.
        toast = _quick_run(page)
    _screenshot(page, "ui-quick-run.png")
    assert "Flow run created" in toast
    created = [r for r in api.post("/flow_runs/filter", json={}).json()
               if r["id"] not in before and r["deployment_id"] == deployment["id"]]
    assert len(created) == 1
    done = _wait(api, created[0]["id"])
    assert done["state"]["type"] == "COMPLETED", done["state"]


def test_a_custom_run_on_the_data_folder_links_its_report_from_the_ui(served, api, browser, tmp_path):
    from tests.synthetic import write_mirror

    deployment = _deployment(api, "on-demand")
    # A few seconds of work by default; the form's one entry is the mirror.
    api.patch(f"/deployments/{deployment['id']}", json={"parameters": {
        **TINY, "artifacts_dir": str(served["store"]), "accuracy_threshold": 0.5}}).raise_for_status()
    # The project's data/ (as `make data` fills it) is allowed without any setting; the path is relative.
    mirror = write_mirror(ROOT / "data" / f".test-mirror-{os.getpid()}")
    before = {r["id"] for r in api.post("/flow_runs/filter", json={}).json()}
    try:
        page = browser.new_page()
        page.goto(f"{served['url']}/v2/deployments/deployment/{deployment['id']}")
        page.get_by_role("button", name="Run", exact=True).click(timeout=30_000)
        page.get_by_role("menuitem", name="Custom run").click()
        # `mirror` is a plain text field, not a choice of types.
        page.get_by_label("mirror (Optional)").fill(str(mirror.relative_to(ROOT)), timeout=30_000)
        _screenshot(page, "ui-custom-run.png")
        page.get_by_role("button", name="Submit").click()
        page.wait_for_url("**/deployments/deployment/**?tab=Runs*", timeout=30_000)
        created = _eventually(lambda: [r for r in api.post("/flow_runs/filter", json={}).json()
                                       if r["id"] not in before and r["deployment_id"] == deployment["id"]])
        assert len(created) == 1
        assert created[0]["parameters"]["mirror"] == str(mirror.relative_to(ROOT))
        done = _wait(api, created[0]["id"])
    finally:
        shutil.rmtree(mirror)
    assert done["state"]["type"] == "COMPLETED", done["state"]
    page.goto(f"{served['url']}/v2/runs/flow-run/{done['id']}?tab=Artifacts")
    # The run's Artifacts tab: its report.html card opens the link artifact, whose link opens the report.
    page.get_by_role("link", name="mnist-report-html").first.click(timeout=30_000)
    page.wait_for_url("**/v2/artifacts/artifact/**")
    # A single-page app: the address changes before the artifact's page replaces the run's,
    # whose card holds a "report.html" link too. Its details panel ("Key") is the artifact page's own.
    page.get_by_text("Key", exact=True).wait_for(timeout=30_000)
    _screenshot(page, "ui-report-link.png")
    page.get_by_role("link", name="report.html", exact=True).first.click(timeout=30_000)
    page.wait_for_url(f"http://127.0.0.1:{served['env']['REPORTS_PORT']}/runs/{done['id']}/report.html")
    assert page.get_by_role("heading", name="Quality gate").is_visible()
    assert "promoted to champion" in page.content()
    _screenshot(page, "ui-report.png")


def test_ten_runs_created_at_once_are_all_created_and_complete(served, api, mirror, tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    url = f"{served['url']}/api/deployments/{_deployment(api, 'on-demand')['id']}/create_flow_run"
    body = {"parameters": _tiny(mirror, tmp_path / "artifacts")}
    with httpx.Client(timeout=60) as plain, ThreadPoolExecutor(10) as pool:  # no retries of 503s here
        answers = list(pool.map(lambda _: plain.post(url, json=body), range(10)))
    assert [a.status_code for a in answers] == [201] * 10, [a.text[:200] for a in answers if a.status_code != 201]
    finished = [_wait(api, a.json()["id"], timeout=600) for a in answers]
    assert [run["state"]["type"] for run in finished] == ["COMPLETED"] * 10


def test_retry_from_the_browser(served, api, browser, mirror, tmp_path):
    store = tmp_path / "artifacts"
    store.mkdir()
    (store / "evaluate").write_text("a file where the evaluate stage's folder must go")
    run = api.post(f"/deployments/{_deployment(api, 'on-demand')['id']}/create_flow_run",
                   json={"parameters": _tiny(mirror, store)}).json()
    assert _wait(api, run["id"])["state"]["type"] == "FAILED"
    (store / "evaluate").unlink()

    page = browser.new_page()
    page.goto(f"{served['url']}/v2/runs/flow-run/{run['id']}")
    page.get_by_role("button", name="Open menu").click(timeout=30_000)
    page.get_by_role("menuitem", name="Retry", exact=True).click()
    page.get_by_role("alertdialog").get_by_role("button", name="Retry", exact=True).click()
    page.get_by_text("Flow run scheduled for retry").wait_for(state="visible", timeout=15_000)
    retried = _wait(api, run["id"])
    page.reload()
    page.get_by_text("Completed").first.wait_for(state="visible", timeout=30_000)
    _screenshot(page, "ui-retry.png")
    assert retried["state"]["type"] == "COMPLETED", retried["state"]
    states = _stage_states(api, run["id"])
    assert [states[t] for t in STAGE_TASKS] == ["Cached", "Cached", "Cached", "Completed", "Completed"]


def _quick_run(page) -> str:
    """Run > Quick run on a deployment's page; the text of the toast that answers."""
    page.get_by_role("button", name="Run", exact=True).click(timeout=30_000)
    page.get_by_role("menuitem", name="Quick run").click()
    toast = page.locator("[data-sonner-toast]").last
    toast.wait_for(state="visible", timeout=15_000)
    page.wait_for_timeout(500)
    return toast.inner_text()


def _processes() -> list[tuple[int, int, int]]:
    """(pid, parent pid, process group) of every process, from /proc."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        found.append((int(stat.parent.name), int(fields[1]), int(fields[2])))
    return found


def _children(pid: int) -> list[int]:
    return [child for child, parent, _ in _processes() if parent == pid]


def _members(group: int) -> list[int]:
    return [pid for pid, _, pgrp in _processes() if pgrp == group]


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"  # a zombie has ended; only its exit status is left


def test_a_command_line_run_reports_to_the_served_server(served, api, mirror, tmp_path):
    import json

    env = {**served["env"]}
    env.pop("PREFECT_API_URL", None)  # as in a new shell: found through `make serve`'s record of its port
    done = subprocess.run([sys.executable, "-m", "flows.cli", "run", "--mirror", str(mirror), "--artifacts-dir",
                           str(tmp_path / "artifacts"), "--epochs", "1", "--batch-size", "16", "--json"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["server"] == {"api_url": f"{served['url']}/api", "temporary": False}
    listed = api.get(f"/flow_runs/{summary['flow_run_id']}").json()
    assert listed["state"]["type"] == "COMPLETED"


def test_a_killed_flow_run_retried_leaves_no_task_run_running(served, api, mirror, tmp_path):
    import signal

    run = api.post(f"/deployments/{_deployment(api, 'on-demand')['id']}/create_flow_run",
                   json={"parameters": _tiny(mirror, tmp_path / "artifacts", epochs=60)}).json()
    assert _eventually(lambda: _stage_states(api, run["id"]).get("train_model") == "Running", timeout=120)
    worker = int((served["home"] / "run" / "worker.pid").read_text())
    for pid in [pid for pid in _children(worker) if _running(pid)]:
        os.kill(pid, signal.SIGKILL)  # the machine lost, as far as the flow run can tell
    # Prefect's worker sees its flow run's process end, and marks the run Crashed.
    assert _eventually(lambda: api.get(f"/flow_runs/{run['id']}").json()["state"]["type"] == "CRASHED", timeout=60)
    time.sleep(10)  # the worker reports the process's end once more; a person reads the page first too
    # Retry, as the UI does it.
    api.post(f"/flow_runs/{run['id']}/set_state", json={"state": {"type": "SCHEDULED", "name": "AwaitingRetry",
                                                                  "message": "Retry from the UI"}, "force": True})
    done = _wait(api, run["id"], timeout=300)
    assert done["state"]["type"] == "COMPLETED", done["state"]

    def unfinished() -> list[str]:
        states = api.post("/task_runs/filter", json={"flow_runs": {"id": {"any_": [run["id"]]}}}).json()
        return [t["name"] for t in states if t["state"]["type"] in ("RUNNING", "PENDING")]

    # Task runs' states reach the server as events, a moment after the flow run's own: the last task
    # (publish_report) can still read Running when the flow run already reads Completed.
    assert _eventually(lambda: not unfinished(), timeout=30), unfinished()
    states = api.post("/task_runs/filter", json={"flow_runs": {"id": {"any_": [run["id"]]}}}).json()
    assert "Crashed" in [t["state"]["name"] for t in states if t["task_key"].startswith("train_model")]


def test_stop_ends_a_flow_run_in_progress_as_cancelled(tmp_path, mirror):
    # Prefect starts each flow run in a session of its own, outside the worker's process group.
    home = tmp_path / "prefect-home"
    nightly = {"mirror": str(mirror), "epochs": 2}
    with _served(home, MNIST_PIPELINE_NIGHTLY=json.dumps(nightly)) as server, \
            _PatientClient(base_url=f"{server['url']}/api", timeout=30) as api:
        assert {k: _deployment(api, "nightly")["parameters"][k] for k in nightly} == nightly
        run = api.post(f"/deployments/{_deployment(api, 'on-demand')['id']}/create_flow_run",
                       json={"parameters": _tiny(mirror, tmp_path / "artifacts", epochs=500)}).json()
        assert _eventually(lambda: _stage_states(api, run["id"]).get("train_model") == "Running", timeout=120)
        worker = int((server["home"] / "run" / "worker.pid").read_text())
        flow_runs = [pid for pid in _children(worker) if _running(pid)]
        assert flow_runs
        stopped = _serve("stop", server["env"])
        assert stopped.returncode == 0, stopped.stderr
        assert not [pid for pid in flow_runs if _running(pid)]
    # What the UI shows after the next `make serve`.
    with _served(home) as server, _PatientClient(base_url=f"{server['url']}/api", timeout=30) as api:
        assert api.get(f"/flow_runs/{run['id']}").json()["state"]["type"] == "CANCELLED"


def test_basic_auth_guards_the_server_and_serve_uses_it(tmp_path):
    with _served(tmp_path / "home", PREFECT_SERVER_API_AUTH_STRING="admin:s3cret") as server, \
            _PatientClient() as client:
        url = f"{server['url']}/api/deployments/filter"
        assert client.post(url, json={}).status_code == 401
        deployments = client.post(url, json={}, auth=("admin", "s3cret")).json()
        assert sorted(d["name"] for d in deployments) == ["nightly", "on-demand", "sweep", "weekly-gc"]
        assert _eventually(lambda: client.post(
            f"{server['url']}/api/work_pools/local-process/workers/filter", json={}, auth=("admin", "s3cret"),
        ).json()), "the worker never reached the server"


def _eventually(probe, timeout: float = 60):
    deadline = time.monotonic() + timeout
    while not (result := probe()) and time.monotonic() < deadline:
        time.sleep(1)
    return result


def test_two_workers_on_postgres_redis_and_s3_share_runs_and_compute_each_stage_once(
        tmp_path_factory, mirror, s3_settings, monkeypatch):
    """docs/multi-host.md's set-up on loopback: `make serve DB=postgres REDIS=1`, a store in S3 (moto),
    a second worker with a local copy of its own (another host), and three runs created at once."""
    import tempfile
    import uuid

    from tasks.engine import remote

    home = tmp_path_factory.mktemp("cluster-prefect-home")
    for name, value in s3_settings.items():
        monkeypatch.setenv(name, value)  # for this process's look into the bucket
    bucket = f"mnist-{uuid.uuid4().hex[:12]}"
    remote.Remote(f"s3://{bucket}").fs.mkdir(bucket)
    store = f"s3://{bucket}/team"
    # PostgreSQL's own account must reach its folder: outside pytest's private temporary folder.
    pg_dir = tempfile.mkdtemp(prefix="cluster-postgres-")
    with _served(home, DB="postgres", REDIS="1", PG_DIR=pg_dir, PG_PORT=str(free_port()),
                 REDIS_PORT=str(free_port()), MNIST_PIPELINE_S3_CACHE=str(home / "copy-a"),
                 MNIST_PIPELINE_ALLOWED_ROOTS=f"{home.parent.parent}:{store}", **s3_settings) as served:
        run_dir = home / "run"
        second_env = {**served["env"], "PREFECT_API_URL": f"{served['url']}/api", "PROJECT_DIR": str(ROOT),
                      "MNIST_PIPELINE_REDIS_URL": (run_dir / "redis.url").read_text().strip(),
                      "MNIST_PIPELINE_S3_CACHE": str(home / "copy-b")}
        with open(home / "second-worker.log", "w") as log:
            second = subprocess.Popen([str(Path(sys.executable).parent / "prefect"), "worker", "start", "--pool",
                                       "local-process", "--limit", "1", "--name", "second"],
                                      env=second_env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                      start_new_session=True)
        try:
            with _PatientClient(base_url=f"{served['url']}/api", timeout=30) as api:
                same = _tiny(mirror, store)
                runs = [api.post(f"/deployments/{_deployment(api, name)['id']}/create_flow_run",
                                 json={"parameters": params}).json()["id"]
                        for name, params in [("on-demand", same), ("nightly", same),
                                             ("on-demand", {**same, "epochs": 2})]]
                finished = [_wait(api, run, timeout=400) for run in runs]
                assert [r["state"]["type"] for r in finished] == ["COMPLETED"] * 3, [r["state"] for r in finished]
                task_runs = api.post("/task_runs/filter", json={
                    "flow_runs": {"id": {"any_": runs}}}).json()
        finally:
            os.killpg(second.pid, signal.SIGTERM)
            try:
                second.wait(timeout=30)
            except subprocess.TimeoutExpired:
                # An idle Prefect worker's graceful shutdown can hang (as `make stop` knows): its runs are done.
                os.killpg(second.pid, signal.SIGKILL)
                second.wait(timeout=30)
        computed = {}
        for task_run in task_runs:
            name = next((s for s in STAGE_TASKS if task_run["name"].startswith(s)), None)
            if name and task_run["state"]["name"] == "Completed":
                computed[name] = computed.get(name, 0) + 1
        # Two distinct inputs for training on (1 and 2 epochs), one for the data stages.
        assert computed == {"download_dataset": 1, "preprocess_dataset": 1, "train_model": 2,
                            "evaluate_model": 2, "build_report": 2}, computed
        # Both workers ran some of them: a flow run's own lines (its "View at" link) are in its worker's log;
        # both workers try to submit each run, and the one the server refuses says "Aborted submission".
        ran = [{run for run in runs if re.search(rf"View at \S*{run}", log)}
               for log in ((run_dir / "worker.log").read_text(), (home / "second-worker.log").read_text())]
        assert all(ran) and not ran[0] & ran[1] and ran[0] | ran[1] == set(runs), ran
        # The entries are in the bucket, each once.
        manifests = [key for key in remote.Remote(store).fs.find(f"{bucket}/team") if key.endswith("/manifest.json")]
        assert len(manifests) == 8
        # And the server's database is PostgreSQL.
        assert (run_dir / "postgres.url").read_text().startswith("postgresql+asyncpg://")
