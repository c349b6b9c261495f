import signal
import subprocess
import sys
import threading
import time

import pytest

from engine import locking
from engine.locking import FileLockManager, lock_manager


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
        [sys.executable, "-c", f"from engine.locking import lock_manager; locks = lock_manager({str(tmp_path)!r}); {code}"],
        stdout=subprocess.PIPE, text=True)


def test_the_setting_chooses_the_lock_manager(backend, tmp_path):
    locks = lock_manager(tmp_path)
    assert isinstance(locks, FileLockManager) == (backend == "flock")


@pytest.mark.e2e
def test_a_store_locked_in_redis_keeps_every_process_on_redis(redis_url, tmp_path, monkeypatch):
    from engine.store import StoreError

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
    from engine.locking import run_in_progress, store_exclusively

    store = str(tmp_path / "store")
    with run_in_progress(lock_manager(tmp_path), store):
        with store_exclusively(lock_manager(tmp_path), store) as alone:
            assert not alone
        with store_exclusively(lock_manager(tmp_path / "another"), store + "-another") as alone:
            assert alone  # another store's gc is none of this run's business
    with store_exclusively(lock_manager(tmp_path), store) as alone:
        assert alone
    holder = _probe(tmp_path, "import time; from engine.locking import run_in_progress\n"
                              f"with run_in_progress(locks, {store!r}):\n print('running', flush=True); time.sleep(60)")
    assert holder.stdout.readline().strip() == "running"
    holder.kill()
    holder.wait()
    time.sleep(2.5 if backend == "redis" else 0)  # Redis: the run's key expires
    with store_exclusively(lock_manager(tmp_path), store) as alone:
        assert alone


@pytest.mark.e2e
def test_gc_sees_a_run_in_progress_on_a_store_whose_path_reads_as_a_pattern(redis_url, tmp_path, monkeypatch):
    from engine.locking import run_in_progress, store_exclusively

    monkeypatch.setenv(locking.REDIS_URL_ENV, redis_url)
    store = str(tmp_path / "art[2]*?\\")  # SCAN MATCH's pattern characters, which a folder's name may hold
    with run_in_progress(lock_manager(tmp_path), store):
        with store_exclusively(lock_manager(tmp_path), store) as alone:
            assert not alone


@pytest.mark.e2e
def test_a_lock_that_expired_while_its_holder_was_stopped_is_found_lost_and_released_quietly(
        redis_url, tmp_path, monkeypatch, key):
    monkeypatch.setenv(locking.REDIS_URL_ENV, redis_url)
    monkeypatch.setenv(locking.REDIS_LOCK_TTL_ENV, "1.5")
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys\nfrom engine import locking\n"
         f"locks = locking.lock_manager({str(tmp_path)!r}); locks.acquire_lock({key!r}, 'run-a')\n"
         f"print(locking.lost(locks, {key!r}), flush=True); sys.stdin.readline()\n"
         f"print(locking.lost(locks, {key!r}), flush=True)\n"
         f"locks.release_lock({key!r}, 'run-a'); print('released', flush=True)"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "False"
    holder.send_signal(signal.SIGSTOP)  # no renewal: the lock expires within its time to live
    try:
        locks = lock_manager(tmp_path)
        assert locks.acquire_lock(key, "run-b", acquire_timeout=5)  # another run takes over
    finally:
        holder.send_signal(signal.SIGCONT)
    out, err = holder.communicate("go on\n", timeout=30)
    assert (out.split(), holder.returncode) == (["True", "released"], 0), err
    assert "no longer owned" not in err
    assert locks.is_locked(key) and not locking.lost(locks, key)  # the other run's lock stays
    locks.release_lock(key, "run-b")


def test_locks_that_cannot_be_taken_are_one_line_without_the_password(tmp_path, monkeypatch):
    from ops.temporary_server import free_port
    from engine.store import StoreError

    (tmp_path / "file").write_text("")
    monkeypatch.delenv(locking.REDIS_URL_ENV, raising=False)
    with pytest.raises(StoreError, match=f"^cannot keep locks in {tmp_path / 'file'}: Not a directory$"):
        lock_manager(tmp_path / "file")
    for url in ("http://user:hunter2@127.0.0.1:6379/0", "hunter2", f"redis://:hunter2@127.0.0.1:{free_port()}/0"):
        monkeypatch.setenv(locking.REDIS_URL_ENV, url)
        with pytest.raises(StoreError, match=f"^cannot take this store's locks in the Redis that "
                                             f"{locking.REDIS_URL_ENV} names: ") as refused:
            lock_manager(tmp_path / url.replace("/", "_"))
        assert "hunter2" not in str(refused.value) and "\n" not in str(refused.value)
        assert not (tmp_path / url.replace("/", "_") / locking.REDIS_RECORD).exists()  # nothing recorded
    monkeypatch.delenv(locking.REDIS_URL_ENV)
    (tmp_path / "recorded").mkdir()
    (tmp_path / "recorded" / locking.REDIS_RECORD).write_text("garbage\n")
    with pytest.raises(StoreError, match=f"in the Redis that {tmp_path / 'recorded' / locking.REDIS_RECORD} names"):
        lock_manager(tmp_path / "recorded")


def test_a_lock_on_a_read_only_disk_is_a_store_error(tmp_path):
    from engine.locking import store_exclusively
    from engine.store import StoreError

    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        (disk / ".locks").mkdir()
        subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
        locks = lock_manager(disk / ".locks")
        message = f"^cannot take a lock in {disk / '.locks'}: Read-only file system$"
        with pytest.raises(StoreError, match=message):
            locks.acquire_lock("train/0123456789abcdef/result.json", "run-a")
        with pytest.raises(StoreError, match=message):
            with store_exclusively(locks, str(disk)):
                pass
    finally:
        subprocess.run(["umount", "--lazy", str(disk)], check=True)


@pytest.mark.e2e
def test_a_run_stopped_past_the_time_to_live_is_in_progress_again_once_it_goes_on(redis_url, tmp_path, monkeypatch):
    from engine.locking import store_exclusively

    monkeypatch.setenv(locking.REDIS_URL_ENV, redis_url)
    monkeypatch.setenv(locking.REDIS_LOCK_TTL_ENV, "1.5")
    store = str(tmp_path / "store")
    holder = _probe(tmp_path, "import time; from engine.locking import run_in_progress\n"
                              f"with run_in_progress(locks, {store!r}):\n print('running', flush=True); time.sleep(60)")
    assert holder.stdout.readline().strip() == "running"
    holder.send_signal(signal.SIGSTOP)
    try:
        time.sleep(2.5)  # its key expires
        with store_exclusively(lock_manager(tmp_path), store) as alone:
            assert alone
    finally:
        holder.send_signal(signal.SIGCONT)
    time.sleep(1.5)  # its next renewal
    try:
        with store_exclusively(lock_manager(tmp_path), store) as alone:
            assert not alone
    finally:
        holder.kill()
        holder.wait()
