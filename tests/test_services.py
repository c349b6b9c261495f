"""Past one machine: Prefect's server on PostgreSQL, the stages' locks in Redis.

Both services are Debian's, started by the session's fixtures on loopback in
temporary folders (tests/conftest.py), and stopped afterwards.
"""

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from urllib.parse import urlparse

import pytest

from ops import services
from ops.temporary_server import free_port
from tests.synthetic import write_mirror

pytestmark = pytest.mark.e2e  # servers: out of the fast lane


@pytest.fixture(scope="module")
def postgres_server(postgres_url, tmp_path_factory):
    """`make serve DB=postgres`'s server: Prefect's, on the session's PostgreSQL."""
    port = free_port()
    env = {**os.environ, "PREFECT_HOME": str(tmp_path_factory.mktemp("server-home")),
           "PREFECT_SERVER_DATABASE_CONNECTION_URL": postgres_url, "PREFECT_SERVER_API_PORT": str(port)}
    env.pop("PREFECT_API_URL", None)
    server = subprocess.Popen(
        [sys.executable, "-m", "ops.prefect_compat", "server", "start", "--host", "127.0.0.1", "--port", str(port),
         "--no-services"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    api = f"http://127.0.0.1:{port}/api"
    for _ in range(240):
        try:
            if urllib.request.urlopen(f"{api}/health", timeout=2).read().strip() == b"true":
                break
        except OSError:
            assert server.poll() is None, server.stderr.read()[-3000:]
            time.sleep(0.5)
    yield api
    server.terminate()
    server.wait(timeout=30)


def _psql(postgres_url: str, query: str) -> str:
    url = urlparse(postgres_url)
    done = subprocess.run([services._postgres_bin("psql"), "-h", url.hostname, "-p", str(url.port), "-U",
                           url.username, "-d", url.path.lstrip("/"), "-tAc", query],
                          capture_output=True, text=True, check=True, env={**os.environ, "PGPASSWORD": url.password})
    return done.stdout.strip()


def test_the_cluster_is_on_loopback_behind_a_password(postgres_url):
    url = urlparse(postgres_url)
    assert url.hostname == "127.0.0.1" and len(url.password) >= 24
    assert _psql(postgres_url, "SHOW listen_addresses") == "127.0.0.1"
    wrong = subprocess.run([services._postgres_bin("psql"), "-h", "127.0.0.1", "-p", str(url.port), "-U", "postgres",
                            "-d", "prefect", "-tAc", "SELECT 1"], capture_output=True, text=True,
                           env={**os.environ, "PGPASSWORD": "guess"})
    assert wrong.returncode != 0 and "password authentication failed" in wrong.stderr


def test_redis_refuses_a_client_without_its_password(redis_url):
    import redis

    url = urlparse(redis_url)
    assert url.hostname == "127.0.0.1"
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(host="127.0.0.1", port=url.port).ping()
    assert redis.Redis.from_url(redis_url).ping()


def test_concurrent_runs_on_postgres_and_redis_compute_each_stage_once(postgres_server, postgres_url, redis_url,
                                                                       mirror, tmp_path):
    """Two runs at once, same inputs, one store: the Redis locks let one compute while the other waits."""
    runs = []
    for i in range(2):
        env = {**os.environ, "PREFECT_HOME": str(tmp_path / f"home-{i}"), "PREFECT_API_URL": postgres_server,
               "MNIST_PIPELINE_REDIS_URL": redis_url}
        runs.append(subprocess.Popen(
            [sys.executable, "-m", "ops.cli", "run", "--mirror", str(mirror), "--epochs", "2", "--batch-size", "16",
             "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path))
    outputs = [run.communicate(timeout=300) for run in runs]
    assert [run.returncode for run in runs] == [0, 0], [err[-2000:] for _, err in outputs]
    summaries = [json.loads(out.strip().splitlines()[-1]) for out, _ in outputs]
    for stage in summaries[0]["stages"]:
        assert sorted(s["stages"][stage]["state"] for s in summaries) == ["Cached", "Completed"], stage
    # The locks were Redis's: no lock file in the store, only the record of which Redis.
    assert [p.name for p in (tmp_path / "artifacts" / ".locks").iterdir()] == ["redis.url"]
    # Both runs are in PostgreSQL, which the server wrote through.
    ids = ", ".join(f"'{s['flow_run_id']}'" for s in summaries)
    assert _psql(postgres_url, f"SELECT count(*) FROM flow_run WHERE id IN ({ids}) AND state_type = 'COMPLETED'") == "2"


def test_a_run_stopped_past_its_locks_time_to_live_stops_writing_and_is_served_what_took_over(
        postgres_server, redis_url, tmp_path):
    """Run A is stopped (SIGSTOP) mid-training past its lock's time to live; run B takes the lock over and resumes
    from A's checkpoint in the same folder. A, continued, finds its lock lost before it writes again, and its
    retry is served B's entry."""
    mirror = write_mirror(tmp_path / "mirror", train=1000, test=100)

    def start(name: str) -> subprocess.Popen:
        env = {**os.environ, "PREFECT_HOME": str(tmp_path / name), "PREFECT_API_URL": postgres_server,
               "MNIST_PIPELINE_REDIS_URL": redis_url, "MNIST_PIPELINE_REDIS_LOCK_TTL_S": "3"}
        return subprocess.Popen([sys.executable, "-m", "ops.cli", "run", "--mirror", str(mirror), "--epochs", "4",
                                 "--batch-size", "16", "--json"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path)

    stopped = start("a")
    for line in stopped.stderr:
        if "epoch 1/4" in line:
            stopped.send_signal(signal.SIGSTOP)
            break
    try:
        took_over = start("b")
        out_b, err_b = took_over.communicate(timeout=300)
    finally:
        stopped.send_signal(signal.SIGCONT)
    out_a, err_a = stopped.communicate(timeout=300)
    assert [took_over.returncode, stopped.returncode] == [0, 0], [err_b[-2000:], err_a[-3000:]]
    b, a = (json.loads(out.strip().splitlines()[-1]) for out in (out_b, out_a))
    assert b["stages"]["train"]["state"] == "Completed" and b["train"]["resumed_from_epoch"] >= 1
    # Its first attempt lost the lock; a later one is served B's entry. (With a 3 s time to live, a machine
    # loaded enough to starve the lock's renewal for 3 s can cost one more attempt, never B's entry.)
    assert a["stages"]["train"]["state"] == "Cached" and a["stages"]["train"]["attempts"] >= 2
    assert a["metrics"] == b["metrics"]
    assert "expired while this run was stopped" in err_a and "no longer owned" not in err_a
