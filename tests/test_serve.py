"""`make serve` and `make stop` in Prefect homes of their own: a run stopped mid-way, basic auth,
and the multi-host set-up (PostgreSQL, Redis, S3 and a second worker).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from ops.temporary_server import free_port
from tests import serving
from tests.serving import ROOT

pytestmark = pytest.mark.e2e


def test_stop_ends_a_flow_run_in_progress_as_cancelled(tmp_path, mirror):
    # Prefect starts each flow run in a session of its own, outside the worker's process group.
    home = tmp_path / "prefect-home"
    nightly = {"mirror": str(mirror), "epochs": 2}
    with serving.started(home, MNIST_PIPELINE_NIGHTLY=json.dumps(nightly)) as server, \
            serving.PatientClient(base_url=f"{server['url']}/api", timeout=30) as api:
        assert {k: serving.deployment(api, "nightly")["parameters"][k] for k in nightly} == nightly
        run = api.post(f"/deployments/{serving.deployment(api, 'on-demand')['id']}/create_flow_run",
                       json={"parameters": serving.tiny(mirror, tmp_path / "artifacts", epochs=500)}).json()
        assert serving.eventually(lambda: serving.stage_states(api, run["id"]).get("train_model") == "Running",
                                  timeout=120)
        worker = int((server["home"] / "run" / "worker.pid").read_text())
        flow_runs = [pid for pid in serving.children(worker) if serving.running(pid)]
        assert flow_runs
        # Another run, queued behind it: it waits, named so, and stays queued through `make stop`.
        queued = api.post(f"/deployments/{serving.deployment(api, 'on-demand')['id']}/create_flow_run",
                          json={"parameters": serving.tiny(mirror, tmp_path / "artifacts")}).json()
        assert serving.eventually(lambda: api.get(f"/flow_runs/{queued['id']}").json()["state"]["name"]
                                  == "AwaitingConcurrencySlot", timeout=30)
        stopped = serving.serve_command("stop", server["env"])
        assert stopped.returncode == 0, stopped.stderr
        assert not [pid for pid in flow_runs if serving.running(pid)]
        # It names the run it cancelled, as the UI does, and the one it kept queued; the worker took none.
        assert f"cancelled flow run {run['name']} ({run['id']})" in stopped.stdout
        assert f"kept queued: flow run {queued['name']} ({queued['id']})" in stopped.stdout
    # What the UI shows after the next `make serve`.
    with serving.started(home) as server, serving.PatientClient(base_url=f"{server['url']}/api", timeout=30) as api:
        assert api.get(f"/flow_runs/{run['id']}").json()["state"]["type"] == "CANCELLED"
        # ... and the queued run, left queued, is taken by the new worker.
        assert serving.wait(api, queued["id"], timeout=240)["state"]["type"] == "COMPLETED"


def test_basic_auth_guards_the_server_and_serve_uses_it(tmp_path):
    with serving.started(tmp_path / "home", PREFECT_SERVER_API_AUTH_STRING="admin:s3cret") as server, \
            serving.PatientClient() as client:
        url = f"{server['url']}/api/deployments/filter"
        assert client.post(url, json={}).status_code == 401
        deployments = client.post(url, json={}, auth=("admin", "s3cret")).json()
        assert sorted(d["name"] for d in deployments) == ["nightly", "on-demand", "sweep", "weekly-gc"]
        assert serving.eventually(lambda: client.post(
            f"{server['url']}/api/work_pools/local-process/workers/filter", json={}, auth=("admin", "s3cret"),
        ).json()), "the worker never reached the server"
        _the_reports_and_nothing_else_are_served(server, client, tmp_path, auth=("admin", "s3cret"))


def _the_reports_and_nothing_else_are_served(server, client, tmp_path, auth):
    """The reports' port: a run's report with the API's credentials; without them, or anything else, nothing."""
    import uuid

    reports, store = f"http://127.0.0.1:{server['env']['REPORTS_PORT']}", server["store"]
    run = store / "runs" / str(uuid.uuid4())
    run.mkdir(parents=True)
    (run / "report.html").write_text("<h1>a run's report</h1>")
    (store / ".locks").mkdir(exist_ok=True)
    (store / ".locks" / "redis.url").write_text("redis://:password@127.0.0.1:6379/0")
    outside = tmp_path / "system-configuration"
    outside.mkdir()
    (outside / "shadow.html").write_text("root:$6$hash")
    evil = store / "runs" / str(uuid.uuid4())
    evil.symlink_to(outside)
    page = f"{reports}/runs/{run.name}/report.html"
    assert client.get(page).status_code == 401
    assert client.get(page, auth=auth).text == "<h1>a run's report</h1>"
    for path in ("/", "/runs/", "/.locks/redis.url", f"/runs/{evil.name}/shadow.html"):
        response = client.get(f"{reports}{path}", auth=auth)
        assert response.status_code == 404, path
        assert "password" not in response.text and "hash" not in response.text


def test_two_workers_on_postgres_redis_and_s3_share_runs_and_compute_each_stage_once(
        tmp_path_factory, mirror, s3_settings, monkeypatch):
    """docs/multi-host.md's set-up on loopback: `make serve DB=postgres REDIS=1`, a store in S3 (moto),
    a second worker with a local copy of its own (another host), and three runs created at once."""
    import tempfile
    import uuid

    from engine import remote

    home = tmp_path_factory.mktemp("cluster-prefect-home")
    for name, value in s3_settings.items():
        monkeypatch.setenv(name, value)  # for this process's look into the bucket
    bucket = f"mnist-{uuid.uuid4().hex[:12]}"
    remote.Remote(f"s3://{bucket}").fs.mkdir(bucket)
    store = f"s3://{bucket}/team"
    # PostgreSQL's own account must reach its folder: outside pytest's private temporary folder.
    pg_dir = tempfile.mkdtemp(prefix="cluster-postgres-")
    with serving.started(home, DB="postgres", REDIS="1", PG_DIR=pg_dir, PG_PORT=str(free_port()),
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
            with serving.PatientClient(base_url=f"{served['url']}/api", timeout=30) as api:
                same = serving.tiny(mirror, store)
                runs = [api.post(f"/deployments/{serving.deployment(api, name)['id']}/create_flow_run",
                                 json={"parameters": params}).json()["id"]
                        for name, params in [("on-demand", same), ("nightly", same),
                                             ("on-demand", {**same, "epochs": 2})]]
                finished = [serving.wait(api, run, timeout=400) for run in runs]
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
            name = next((s for s in serving.STAGE_TASKS if task_run["name"].startswith(s)), None)
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
