import subprocess
import sys
import threading
import time

import pytest

from tasks.engine.locking import FileLockManager

KEY = "train/0123456789abcdef/result.json"


def test_second_holder_waits_until_release(tmp_path):
    locks = FileLockManager(tmp_path)
    assert locks.acquire_lock(KEY, "run-a")
    assert locks.is_locked(KEY) and locks.is_lock_holder(KEY, "run-a")
    assert not locks.acquire_lock(KEY, "run-b", acquire_timeout=0.2)

    got = []
    waiter = threading.Thread(target=lambda: got.append(locks.acquire_lock(KEY, "run-b")))
    waiter.start()
    time.sleep(0.3)
    assert got == []
    locks.release_lock(KEY, "run-a")
    waiter.join(timeout=5)
    assert got == [True] and locks.is_lock_holder(KEY, "run-b")


def test_other_process_sees_the_lock(tmp_path):
    locks = FileLockManager(tmp_path)
    locks.acquire_lock(KEY, "run-a")
    probe = f"from tasks.engine.locking import FileLockManager; print(FileLockManager({str(tmp_path)!r}).is_locked({KEY!r}))"
    assert subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True).stdout.strip() == "True"
    locks.release_lock(KEY, "run-a")
    assert subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True).stdout.strip() == "False"


def test_lock_of_a_killed_process_is_not_stale(tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c",
         f"from tasks.engine.locking import FileLockManager; import time; FileLockManager({str(tmp_path)!r}).acquire_lock({KEY!r}, 'doomed'); print('held', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True,
    )
    assert holder.stdout.readline().strip() == "held"
    locks = FileLockManager(tmp_path)
    assert locks.is_locked(KEY)
    holder.kill()
    holder.wait()
    assert locks.acquire_lock(KEY, "survivor", acquire_timeout=2)


def test_release_by_a_non_holder_is_refused(tmp_path):
    locks = FileLockManager(tmp_path)
    locks.acquire_lock(KEY, "run-a")
    with pytest.raises(ValueError, match="run-b does not hold"):
        locks.release_lock(KEY, "run-b")
