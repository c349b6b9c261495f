"""`make serve` as the end-to-end tests drive it: started and stopped in a Prefect home, its API read.

Shared by test_deployments.py (one server for the whole module) and
test_serve.py (servers in homes of their own).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import httpx

from flows.config import TINY
from ops.temporary_server import free_port
from tests.prefect_homes import prefect_home

ROOT = Path(__file__).resolve().parent.parent
STAGE_TASKS = ["download_dataset", "preprocess_dataset", "train_model", "evaluate_model", "build_report"]
FINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


def serve_command(command: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(ROOT / "scripts/serve.sh"), command], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=240)


@contextmanager
def started(home: Path, fresh: bool = False, **extra_env: str):
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
    start = serve_command("start", env)
    try:
        assert start.returncode == 0, start.stdout + start.stderr
        assert f"http://127.0.0.1:{port}" in start.stdout
        yield {"url": f"http://127.0.0.1:{port}", "env": env, "home": home, "store": home / "artifacts"}
    finally:
        pids = [int(p.read_text()) for p in (home / "run").glob("*.pid")]
        stopped = serve_command("stop", env)
        assert stopped.returncode == 0, stopped.stderr
        assert not list((home / "run").glob("*.pid"))
        for pid in pids:  # each process group, children included, has ended
            assert not [member for member in members(pid) if running(member)]


class PatientClient(httpx.Client):
    """Retries 503s, as Prefect's own client does: SQLite answers so under concurrent writes."""

    def request(self, *args, **kwargs) -> httpx.Response:
        for _ in range(10):
            response = super().request(*args, **kwargs)
            if response.status_code != 503:
                break
            time.sleep(1)
        return response


def deployment(api: httpx.Client, name: str) -> dict:
    found = [d for d in api.post("/deployments/filter", json={}).json() if d["name"] == name]
    assert len(found) == 1, f"expected one deployment {name}"
    return found[0]


def wait(api: httpx.Client, run_id: str, timeout: float = 180) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = api.get(f"/flow_runs/{run_id}").json()
        if run["state"]["type"] in FINAL:
            return run
        time.sleep(1)
    raise AssertionError(f"flow run {run_id} still {run['state']['name']} after {timeout} s")


def stage_states(api: httpx.Client, run_id: str) -> dict[str, str]:
    """The latest state name of each stage's task run in a flow run."""
    runs = api.post("/task_runs/filter", json={"flow_runs": {"id": {"any_": [run_id]}},
                                                "sort": "EXPECTED_START_TIME_ASC"}).json()
    return {run["task_key"].rsplit("-", 1)[0]: (run["state"] or {}).get("name") for run in runs
            if run["task_key"].rsplit("-", 1)[0] in STAGE_TASKS}


def tiny(mirror: Path, store: Path, **overrides) -> dict:
    return {"mirror": str(mirror), "artifacts_dir": str(store), **TINY, **overrides}


def processes() -> list[tuple[int, int, int]]:
    """(pid, parent pid, process group) of every process, from /proc."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        found.append((int(stat.parent.name), int(fields[1]), int(fields[2])))
    return found


def children(pid: int) -> list[int]:
    return [child for child, parent, _ in processes() if parent == pid]


def members(group: int) -> list[int]:
    return [pid for pid, _, pgrp in processes() if pgrp == group]


def running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"  # a zombie has ended; only its exit status is left


def eventually(probe, timeout: float = 60):
    deadline = time.monotonic() + timeout
    while not (result := probe()) and time.monotonic() < deadline:
        time.sleep(1)
    return result
