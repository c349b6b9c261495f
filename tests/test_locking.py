import subprocess
import sys
import threading
import time

import pytest

from tasks.engine import locking
from tasks.engine.locking import FileLockManager, lock_manager


# Redis is a server: out of the fast lane, as the other servers are.
@pytest.fixture(params=["flock", pytest.param("redis", marks=pytest.mark.e2e)])
def backend(request, monkeypatch) -> str:
    """Each lock test on both lock managers: flock(2) in a folder, and Redis (cross-host)."""
    if request.param == "redis":
        monkeypatch.setenv(locking.REDIS_URL_ENV, request.getfixturevalue("redis_url"))
        monkeypatch.setenv(locking.REDIS_LOCK_TTL_ENV, "1.5")
    else:
        monkeypatch.delenv(locking.REDIS_URL_ENV, raising=False)
    return request.param


@pytest.fixture
def key(tmp_path) -> str:
    # One Redis serves the session: each test its own key.
    return f"train/{tmp_path.name}/result.json"


def _probe(tmp_path, code: str) -> subprocess.Popen:
    """Another process with the same lock settings (the environment) and folder."""
    return subprocess.Popen(
        [sys.executable, "-c", f"from tasks.engine.locking import lock_manager; locks = lock_manager({str(tmp_path)!r}); {code}"],
        stdout=subprocess.PIPE, text=True)


def test_the_setting_chooses_the_lock_manager(backend, tmp_path):
    locks = lock_manager(tmp_path)
    assert isinstance(locks, FileLockManager) == (backend == "flock")


@pytest.mark.e2e
def test_a_store_locked_in_redis_keeps_every_process_on_redis(redis_url, tmp_path, monkeypatch):
    from tasks.engine.store import StoreError

    monkeypatch.setenv(locking.REDIS_URL_ENV, redis_url)
    lock_manager(tmp_path)
    assert (tmp_path / locking.REDIS_RECORD).stat().st_mode & 0o777 == 0o600
    monkeypatch.delenv(locking.REDIS_URL_ENV)  # `mnist-pipeline gc` from a shell without the setting
    assert not isinstance(lock_manager(tmp_path), FileLockManager)
    monkeypatch.setenv(locking.REDIS_URL_ENV, "redis://127.0.0.1:1/0")
    with pytest.raises(StoreError, match="this store's locks are in the Redis named in"):
        lock_manager(tmp_path)


def test_second_holder_waits_until_release(backend, tmp_path, key):
    locks = lock_manager(tmp_path)
    assert locks.acquire_lock(key, "run-a")
    assert locks.is_locked(key) and locks.is_lock_holder(key, "run-a")
    assert not locks.acquire_lock(key, "run-b", acquire_timeout=0.2)

    got = []
    waiter = threading.Thread(target=lambda: got.append(locks.acquire_lock(key, "run-b")))
    waiter.start()
    time.sleep(0.3)
    assert got == []
    locks.release_lock(key, "run-a")
    waiter.join(timeout=5)
    assert got == [True] and locks.is_lock_holder(key, "run-b")
    locks.release_lock(key, "run-b")


def test_other_process_sees_the_lock(backend, tmp_path, key):
    locks = lock_manager(tmp_path)
    locks.acquire_lock(key, "run-a")
    probe = f"print(locks.is_locked({key!r}))"
    assert _probe(tmp_path, probe).communicate()[0].strip() == "True"
    locks.release_lock(key, "run-a")
    assert _probe(tmp_path, probe).communicate()[0].strip() == "False"


def test_lock_of_a_killed_process_is_not_stale(backend, tmp_path, key):
    holder = _probe(tmp_path, f"import time; locks.acquire_lock({key!r}, 'doomed'); print('held', flush=True); time.sleep(60)")
    assert holder.stdout.readline().strip() == "held"
    locks = lock_manager(tmp_path)
    # Alive, its holder keeps it, past the time to live of a Redis lock (renewed).
    time.sleep(2.5 if backend == "redis" else 0)
    assert locks.is_locked(key)
    assert not locks.acquire_lock(key, "survivor", acquire_timeout=0.2)
    holder.kill()
    holder.wait()
    # flock: released at once; Redis: within the time to live.
    assert locks.acquire_lock(key, "survivor", acquire_timeout=3)
    locks.release_lock(key, "survivor")


def test_release_by_a_non_holder_is_refused(backend, tmp_path, key):
    locks = lock_manager(tmp_path)
    locks.acquire_lock(key, "run-a")
    with pytest.raises(ValueError, match="run-b"):
        locks.release_lock(key, "run-b")
    assert locks.is_lock_holder(key, "run-a")
    locks.release_lock(key, "run-a")


def test_gc_is_kept_out_while_a_run_is_in_progress_and_a_killed_run_lets_it_in(backend, tmp_path):
    from tasks.engine.locking import run_in_progress, store_exclusively

    store = str(tmp_path / "store")
    with run_in_progress(lock_manager(tmp_path), store):
        with store_exclusively(lock_manager(tmp_path), store) as alone:
            assert not alone
        with store_exclusively(lock_manager(tmp_path / "another"), store + "-another") as alone:
            assert alone  # another store's gc is none of this run's business
    with store_exclusively(lock_manager(tmp_path), store) as alone:
        assert alone
    holder = _probe(tmp_path, "import time; from tasks.engine.locking import run_in_progress\n"
                              f"with run_in_progress(locks, {store!r}):\n print('running', flush=True); time.sleep(60)")
    assert holder.stdout.readline().strip() == "running"
    holder.kill()
    holder.wait()
    time.sleep(2.5 if backend == "redis" else 0)  # Redis: the run's key expires
    with store_exclusively(lock_manager(tmp_path), store) as alone:
        assert alone
