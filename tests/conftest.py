"""Shared fixtures: a private Prefect home, one test harness, tiny data."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

# Before Prefect is imported anywhere: never touch ~/.prefect, stay offline-quiet.
os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix="prefect-home-")
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402

from tests.synthetic import write_mirror  # noqa: E402


@pytest.fixture(scope="session")
def prefect_harness():
    """One Prefect test server for the whole session (it takes ~20 s to start)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness():
        yield


@pytest.fixture(scope="session")
def mirror(tmp_path_factory) -> Path:
    return write_mirror(tmp_path_factory.mktemp("mirror"))


@pytest.fixture
def store(tmp_path) -> str:
    return str(tmp_path / "artifacts")


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="session")
def redis_url():
    """A Redis server of the session's own on loopback (Debian's redis-server, see `make system-deps`)."""
    from flows import services

    folder = Path(tempfile.mkdtemp(prefix="redis-"))
    url = services.start_redis(folder, _free_port())
    yield url
    services.stop_redis(folder)


@pytest.fixture(scope="session")
def postgres_url():
    """A PostgreSQL cluster of the session's own on loopback (Debian's postgresql), removed afterwards."""
    import shutil

    from flows import services

    folder = Path(tempfile.mkdtemp(prefix="postgres-"))
    url = services.start_postgres(folder, _free_port())
    yield url
    services.stop_postgres(folder)
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def s3_settings():
    """A real S3 API on loopback (moto's server), and the standard AWS settings that reach it."""
    from moto.server import ThreadedMotoServer

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
    server.stop()
