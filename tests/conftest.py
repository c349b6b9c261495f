"""Shared fixtures: a private Prefect home, one test harness, tiny data."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

# Before Prefect is imported anywhere: never touch ~/.prefect, stay offline-quiet. Removed at the end.
os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix="prefect-home-")
atexit.register(shutil.rmtree, os.environ["PREFECT_HOME"], ignore_errors=True)
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ["DO_NOT_TRACK"] = "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402

# Its asserts fail with their values shown, as the test modules' own do.
pytest.register_assert_rewrite("tests.serving")

from tests.synthetic import write_mirror  # noqa: E402
from ops.temporary_server import free_port  # noqa: E402


@pytest.fixture(scope="session")
def prefect_harness():
    """One Prefect test server for the whole session (it takes ~20 s to start)."""
    from prefect.testing.utilities import prefect_test_harness

    # Its default 30 s start-up limit fails the suite on a machine busy with other work.
    with prefect_test_harness(server_startup_timeout=180):
        yield


@pytest.fixture(scope="session")
def mirror(tmp_path_factory) -> Path:
    return write_mirror(tmp_path_factory.mktemp("mirror"))


@pytest.fixture
def store(tmp_path) -> str:
    return str(tmp_path / "artifacts")


@pytest.fixture
def memory_bucket(tmp_path, monkeypatch):
    """`s3://team/mnist` in memory (fsspec's memory file system standing in for s3fs): the file system, and
    `host(name)`, the store in host `name`'s local copy of it (under tmp_path/<name>)."""
    import s3fs
    from fsspec.implementations.memory import MemoryFileSystem

    from engine import remote, store as store_module
    from engine.store import ArtifactStore

    monkeypatch.setattr(MemoryFileSystem, "store", {})
    monkeypatch.setattr(MemoryFileSystem, "pseudo_dirs", [""])
    fs = MemoryFileSystem(skip_instance_cache=True)
    monkeypatch.setattr(s3fs, "S3FileSystem", lambda **options: fs)
    monkeypatch.setattr(store_module, "_IN_BUCKET", set())

    def host(name: str) -> ArtifactStore:
        monkeypatch.setenv(remote.CACHE_ENV, str(tmp_path / name))
        return ArtifactStore(remote.local_root("s3://team/mnist"))

    return fs, host


def _service(name: str, start, stop):
    """A service of the session's own, in a temporary folder on a free loopback port; stopped and removed after."""
    folder = Path(tempfile.mkdtemp(prefix=f"{name}-"))
    try:
        yield start(folder, free_port())
    finally:
        stop(folder)
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def redis_url():
    """Debian's redis-server (see `make system-deps`): its redis:// URL."""
    from ops import services

    yield from _service("redis", services.start_redis, services.stop_redis)


@pytest.fixture(scope="session")
def postgres_url():
    """A cluster of Debian's postgresql: its connection URL for Prefect's server."""
    from ops import services

    yield from _service("postgres", services.start_postgres, services.stop_postgres)


@pytest.fixture(scope="session")
def s3_settings():
    """A real S3 API on loopback (moto's server), and the standard AWS settings that reach it."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
    server.stop()


def pytest_collection_modifyitems(items):
    """The files with the most end-to-end tests first, the unit tests' files last.

    `make test` runs a file at a time in each of its lanes (pytest-xdist,
    `--dist loadfile`, in this order). The count of end-to-end tests stands
    for a file's length: the long files, which start servers and flow runs,
    start first, and the short ones fill the lanes at the end.
    """
    end_to_end: dict[str, int] = {}
    for item in items:
        end_to_end[item.module.__name__] = end_to_end.get(item.module.__name__, 0) + bool(
            item.get_closest_marker("e2e"))
    items.sort(key=lambda item: -end_to_end[item.module.__name__])
