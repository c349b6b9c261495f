"""The pipeline as people operate it: `make serve`'s server, deployments and worker.

One server, work pool, set of deployments and worker for the module, started by
scripts/serve.sh on a free loopback port and stopped by it at the end.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from flows.config import TINY
from ops import deployments
from tests import serving
from tests.serving import ROOT

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    # The first start a user sees: an empty home, its database created and migrated.
    with serving.started(tmp_path_factory.mktemp("served-prefect-home"), fresh=True) as server:
        yield server


@pytest.fixture(scope="module")
def api(served):
    with serving.PatientClient(base_url=f"{served['url']}/api", timeout=30) as client:
        yield client


def test_serve_lists_both_deployments_with_the_nightly_schedule(api):
    nightly = serving.deployment(api, "nightly")
    assert nightly["enforce_parameter_schema"] is True
    schedule = nightly["schedules"][0]["schedule"]
    assert schedule["cron"] == "0 2 * * *" and schedule["timezone"]
    assert serving.deployment(api, "on-demand")["schedules"] == []
    assert api.get("/work_pools/local-process").json()["type"] == "process"
    # Prefect's zombie-run detection: a flow run whose heartbeats stop is marked Crashed.
    from ops.deployments import ZOMBIES

    assert ZOMBIES in [a["name"] for a in api.post("/automations/filter", json={}).json()]


def test_the_api_answers_the_uis_own_origin_only(served):
    """Another web page open in the operator's browser cannot call the API: its preflight gets no allow-origin."""
    url = f"{served['url']}/api/deployments/filter"
    preflight = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "content-type"}
    with httpx.Client(timeout=30) as client:
        for origin in ("https://evil.example", f"http://127.0.0.1:{served['env']['REPORTS_PORT']}"):
            refused = client.options(url, headers={"Origin": origin, **preflight})
            assert refused.status_code == 400 and "access-control-allow-origin" not in refused.headers, origin
            assert "access-control-allow-origin" not in client.post(url, json={}, headers={"Origin": origin}).headers
        ui = client.options(url, headers={"Origin": served["url"], **preflight})
        assert ui.status_code == 200 and ui.headers["access-control-allow-origin"] == served["url"]


def test_serve_twice_keeps_one_of_each(served, api):
    pids = {p.name: p.read_text() for p in (served["home"] / "run").glob("*.pid")}
    again = serving.serve_command("start", served["env"])
    assert again.returncode == 0, again.stderr
    assert {p.name: p.read_text() for p in (served["home"] / "run").glob("*.pid")} == pids
    assert sorted(d["name"] for d in api.post("/deployments/filter", json={}).json()) == ["nightly", "on-demand", "sweep", "weekly-gc"]


def test_on_demand_run_completes_with_its_parameters(api, mirror, tmp_path):
    params = serving.tiny(mirror, tmp_path / "artifacts", epochs=2)
    run = api.post(f"/deployments/{serving.deployment(api, 'on-demand')['id']}/create_flow_run",
                   json={"parameters": params}).json()
    done = serving.wait(api, run["id"])
    assert done["state"]["type"] == "COMPLETED", done["state"]
    assert done["parameters"]["epochs"] == 2
    assert set(serving.stage_states(api, run["id"]).values()) == {"Completed"}
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
    answer = api.post(f"/deployments/{serving.deployment(api, 'on-demand')['id']}/create_flow_run",
                      json={"parameters": bad})
    assert answer.status_code == 409
    assert message in answer.json()["detail"]


def test_paths_outside_the_allowed_roots_are_refused(api, mirror):
    run = api.post(f"/deployments/{serving.deployment(api, 'on-demand')['id']}/create_flow_run",
                   json={"parameters": serving.tiny(mirror, Path("/etc/mnist-artifacts"))}).json()
    failed = serving.wait(api, run["id"])
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
    run = api.post(f"/deployments/{serving.deployment(api, 'on-demand')['id']}/create_flow_run",
                   json={"parameters": serving.tiny(mirror, store)}).json()
    failed = serving.wait(api, run["id"])
    assert failed["state"]["type"] == "FAILED"
    assert "stage train failed" in failed["state"]["message"]

    (store / "train").unlink()  # the cause, repaired
    # What the UI's Retry button sends.
    answer = api.post(f"/flow_runs/{run['id']}/set_state", json={
        "state": {"type": "SCHEDULED", "name": "AwaitingRetry", "message": "Retry from the UI"},
        "force": True,
    })
    assert answer.status_code == 201
    retried = serving.wait(api, run["id"])
    assert retried["state"]["type"] == "COMPLETED", retried["state"]
    assert retried["run_count"] == 2
    states = serving.stage_states(api, run["id"])
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
    shots = serving.ROOT / "build" / "test-artifacts"
    shots.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(shots / name))


def test_quick_run_from_the_browser(served, api, browser, mirror, tmp_path):
    deployment = serving.deployment(api, "on-demand")
    # Quick run takes the deployment's defaults: point them at the tiny mirror.
    api.patch(f"/deployments/{deployment['id']}",
              json={"parameters": serving.tiny(mirror, tmp_path / "artifacts")}).raise_for_status()
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
    done = serving.wait(api, created[0]["id"])
    assert done["state"]["type"] == "COMPLETED", done["state"]


def test_a_custom_run_on_the_data_folder_links_its_report_from_the_ui(served, api, browser, tmp_path):
    from tests.synthetic import write_mirror

    deployment = serving.deployment(api, "on-demand")
    # A few seconds of work by default; the form's one entry is the mirror.
    api.patch(f"/deployments/{deployment['id']}", json={"parameters": {
        **TINY, "artifacts_dir": str(served["store"]), "accuracy_threshold": 0.5}}).raise_for_status()
    # The project's data/ (as `make data` fills it) is allowed without any setting; the path is relative.
    mirror = write_mirror(serving.ROOT / "data" / f".test-mirror-{os.getpid()}")
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
        created = serving.eventually(lambda: [r for r in api.post("/flow_runs/filter", json={}).json()
                                       if r["id"] not in before and r["deployment_id"] == deployment["id"]])
        assert len(created) == 1
        assert created[0]["parameters"]["mirror"] == str(mirror.relative_to(ROOT))
        done = serving.wait(api, created[0]["id"])
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
    page.get_by_role("heading", name="Quality gate").wait_for(timeout=30_000)
    assert "promoted to champion" in page.content()
    _screenshot(page, "ui-report.png")


def test_ten_runs_created_at_once_are_all_created_and_complete(served, api, mirror, tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    url = f"{served['url']}/api/deployments/{serving.deployment(api, 'on-demand')['id']}/create_flow_run"
    body = {"parameters": serving.tiny(mirror, tmp_path / "artifacts")}
    with httpx.Client(timeout=60) as plain, ThreadPoolExecutor(10) as pool:  # no retries of 503s here
        answers = list(pool.map(lambda _: plain.post(url, json=body), range(10)))
    assert [a.status_code for a in answers] == [201] * 10, [a.text[:200] for a in answers if a.status_code != 201]
    finished = [serving.wait(api, a.json()["id"], timeout=600) for a in answers]
    assert [run["state"]["type"] for run in finished] == ["COMPLETED"] * 10
    # While one ran, the others waited for the worker's one slot, and said so: never Late.
    histories = [api.get("/flow_run_states/", params={"flow_run_id": run["id"]}).json() for run in finished]
    seen = [(state["name"], state["message"] or "") for history in histories for state in history]
    assert "Late" not in [name for name, _ in seen]
    waited = [message for name, message in seen if name == "AwaitingConcurrencySlot"]
    assert len(waited) >= 5 and all(message.startswith("waits for flow run ") for message in waited), seen


def test_retry_from_the_browser(served, api, browser, mirror, tmp_path):
    store = tmp_path / "artifacts"
    store.mkdir()
    (store / "evaluate").write_text("a file where the evaluate stage's folder must go")
    run = api.post(f"/deployments/{serving.deployment(api, 'on-demand')['id']}/create_flow_run",
                   json={"parameters": serving.tiny(mirror, store)}).json()
    assert serving.wait(api, run["id"])["state"]["type"] == "FAILED"
    (store / "evaluate").unlink()

    page = browser.new_page()
    page.goto(f"{served['url']}/v2/runs/flow-run/{run['id']}")
    page.get_by_role("button", name="Open menu").click(timeout=30_000)
    page.get_by_role("menuitem", name="Retry", exact=True).click()
    page.get_by_role("alertdialog").get_by_role("button", name="Retry", exact=True).click()
    page.get_by_text("Flow run scheduled for retry").wait_for(state="visible", timeout=15_000)
    retried = serving.wait(api, run["id"])
    page.reload()
    page.get_by_text("Completed").first.wait_for(state="visible", timeout=30_000)
    _screenshot(page, "ui-retry.png")
    assert retried["state"]["type"] == "COMPLETED", retried["state"]
    states = serving.stage_states(api, run["id"])
    assert [states[t] for t in serving.STAGE_TASKS] == ["Cached", "Cached", "Cached", "Completed", "Completed"]


def _quick_run(page) -> str:
    """Run > Quick run on a deployment's page; the text of the toast that answers."""
    page.get_by_role("button", name="Run", exact=True).click(timeout=30_000)
    page.get_by_role("menuitem", name="Quick run").click()
    toast = page.locator("[data-sonner-toast]").last
    toast.wait_for(state="visible", timeout=15_000)
    page.wait_for_timeout(500)
    return toast.inner_text()


def test_a_command_line_run_reports_to_the_served_server(served, api, mirror, tmp_path):
    import json

    env = {**served["env"]}
    env.pop("PREFECT_API_URL", None)  # as in a new shell: found through `make serve`'s record of its port
    done = subprocess.run([sys.executable, "-m", "ops.cli", "run", "--mirror", str(mirror), "--artifacts-dir",
                           str(tmp_path / "artifacts"), "--epochs", "1", "--batch-size", "16", "--json"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["server"] == {"api_url": f"{served['url']}/api", "temporary": False}
    listed = api.get(f"/flow_runs/{summary['flow_run_id']}").json()
    assert listed["state"]["type"] == "COMPLETED"


def test_a_killed_flow_run_leaves_no_task_run_running_and_its_retry_completes(served, api, mirror, tmp_path):
    import signal

    run = api.post(f"/deployments/{serving.deployment(api, 'on-demand')['id']}/create_flow_run",
                   json={"parameters": serving.tiny(mirror, tmp_path / "artifacts", epochs=60)}).json()
    assert serving.eventually(lambda: serving.stage_states(api, run["id"]).get("train_model") == "Running",
                              timeout=120)
    worker = int((served["home"] / "run" / "worker.pid").read_text())
    for pid in [pid for pid in serving.children(worker) if serving.running(pid)]:
        os.kill(pid, signal.SIGKILL)  # the machine lost, as far as the flow run can tell
    # Prefect's worker sees its flow run's process end, and marks the run Crashed.
    assert serving.eventually(lambda: api.get(f"/flow_runs/{run['id']}").json()["state"]["type"] == "CRASHED",
                              timeout=60)

    def task_runs() -> list[dict]:
        return api.post("/task_runs/filter", json={"flow_runs": {"id": {"any_": [run["id"]]}}}).json()

    def unfinished() -> list[str]:
        return [t["name"] for t in task_runs() if t["state"]["type"] in ("RUNNING", "PENDING")]

    # ... and its task runs, which its process could not end, are marked Crashed too, before anyone retries;
    # the flow run's message says what happened and what to do.
    assert serving.eventually(lambda: not unfinished(), timeout=60), unfinished()
    def state() -> dict:
        return api.get(f"/flow_runs/{run['id']}").json()["state"]

    assert serving.eventually(lambda: (state()["message"] or "").startswith(deployments.RESUMES), timeout=60), state()
    assert state()["type"] == "CRASHED" and "status code: -9" in state()["message"]
    [train] = [t for t in task_runs() if t["task_key"].startswith("train_model")]
    assert train["state"]["type"] == "CRASHED" and "Retry resumes it" in train["state"]["message"]
    time.sleep(10)  # the worker reports the process's end once more; a person reads the page first too
    # Retry, as the UI does it.
    api.post(f"/flow_runs/{run['id']}/set_state", json={"state": {"type": "SCHEDULED", "name": "AwaitingRetry",
                                                                  "message": "Retry from the UI"}, "force": True})
    done = serving.wait(api, run["id"], timeout=300)
    assert done["state"]["type"] == "COMPLETED", done["state"]

    # Task runs' states reach the server as events, a moment after the flow run's own: the last task
    # (publish_report) can still read Running when the flow run already reads Completed.
    assert serving.eventually(lambda: not unfinished(), timeout=30), unfinished()
    states = api.post("/task_runs/filter", json={"flow_runs": {"id": {"any_": [run["id"]]}}}).json()
    assert "Crashed" in [t["state"]["name"] for t in states if t["task_key"].startswith("train_model")]
