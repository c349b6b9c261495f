"""Prefect lock managers whose dead holders never leave a stale lock.

Prefect takes a lock on a stage's cache key before it computes, so two runs
with the same inputs compute once: the second waits, then is served from cache.
- On one machine, flock(2): Prefect's own FileSystemLockManager leaves a file
  that outlives a killed process; the kernel releases a flock with its process.
- Across hosts (`MNIST_PIPELINE_REDIS_URL`), prefect-redis's RedisLockManager,
  its locks renewed while their holder lives: a killed holder's expires within `ttl`.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Union
from uuid import uuid4

from engine import layout
from engine.settings import env_name, settings
from engine.store import StoreError, make_folder, store_errors

_POLL_S = 0.1
REDIS_URL_ENV = env_name("redis_url")
REDIS_RECORD = layout.REDIS_RECORD
REDIS_LOCK_TTL_ENV = env_name("redis_lock_ttl_s")

log = logging.getLogger(__name__)


def lock_manager(directory: Union[str, os.PathLike[str]]) -> Any:
    """The Redis lock manager when REDIS_URL_ENV is set or the store's locks are in Redis, else flock(2) locks.

    A store whose runs lock in Redis says so in `directory/redis.url` (mode 0600: the URL may hold a
    password), so that a process started without the setting (gc, another shell) takes the same locks; a
    setting naming another Redis is refused. Locks that cannot be taken are a StoreError without the URL.
    """
    directory = Path(directory)
    recorded = directory / REDIS_RECORD
    url, source = settings().redis_url, REDIS_URL_ENV
    with store_errors(f"cannot keep locks in {directory}"):
        kept = recorded.read_text().strip() if recorded.is_file() else None
    if kept is not None:
        if url and url != kept:
            raise StoreError(f"this store's locks are in the Redis named in {recorded}; {REDIS_URL_ENV} names "
                             "another: set it to that one, or remove the file once no run uses the store")
        url, source = kept, str(recorded)
    if not url:
        return FileLockManager(directory).open()
    FileLockManager(directory).open()  # the folder, or a clear error
    locks = renewed_redis_locks(url, settings().redis_lock_ttl_s, source)
    if kept is None:
        with store_errors(f"cannot keep locks in {directory}"):
            try:
                fd = os.open(recorded, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:  # another process recorded one a moment ago
                return lock_manager(directory)
            with os.fdopen(fd, "w") as record:
                record.write(url + "\n")
    return locks


@contextmanager
def held(locks: Any, key: str) -> Iterator[None]:
    """Hold the lock on `key` (waiting as long as it takes) for the block."""
    holder = f"{os.getpid()}-{uuid4().hex}"
    locks.acquire_lock(key, holder)
    try:
        yield
    finally:
        locks.release_lock(key, holder)


class FileLockManager:
    """Implements `prefect.locking.protocol.LockManager` with one lock file per key."""

    def __init__(self, directory: Union[str, os.PathLike[str]]):
        self.directory = Path(directory)
        # key -> (holder, file descriptor that holds the lock)
        self._held: dict[str, tuple[str, int]] = {}

    def open(self) -> "FileLockManager":
        """Create the lock folder, or a StoreError: locks not taken would let two runs build one entry at once."""
        with store_errors(f"cannot keep locks in {self.directory}"):
            make_folder(self.directory)
        return self

    def _path(self, key: str) -> Path:
        # Keys hold slashes (`train/<fingerprint>/result.json`): hash to a flat name.
        return self.directory / f"{hashlib.sha256(key.encode()).hexdigest()[:32]}.lock"

    def acquire_lock(self, key: str, holder: str, acquire_timeout: Optional[float] = None,
                     hold_timeout: Optional[float] = None) -> bool:
        """Wait for the lock (for ever by default); `hold_timeout` is moot, see above."""
        if self.is_lock_holder(key, holder):
            return True
        deadline = None if acquire_timeout is None else time.monotonic() + acquire_timeout
        while (fd := _flocked(self._path(key), fcntl.LOCK_EX | fcntl.LOCK_NB)) is None:
            if deadline is not None and time.monotonic() >= deadline:
                return False
            time.sleep(_POLL_S)
        os.ftruncate(fd, 0)
        os.write(fd, f"{holder}\n".encode())  # for people looking at the folder
        self._held[key] = (holder, fd)
        return True

    async def aacquire_lock(self, *args: Any, **kwargs: Any) -> bool:
        return self.acquire_lock(*args, **kwargs)

    def release_lock(self, key: str, holder: str) -> None:
        if not self.is_lock_holder(key, holder):
            raise ValueError(f"{holder} does not hold the lock on {key}")
        _, fd = self._held.pop(key)
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)

    def is_locked(self, key: str) -> bool:
        if key in self._held:
            return True
        if not self._path(key).exists():
            return False
        fd = _flocked(self._path(key), fcntl.LOCK_EX | fcntl.LOCK_NB)
        if fd is not None:
            os.close(fd)  # which releases the lock
        return fd is None

    def is_lock_holder(self, key: str, holder: str) -> bool:
        return key in self._held and self._held[key][0] == holder

    def wait_for_lock(self, key: str, timeout: Optional[float] = None) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.is_locked(key):
            if deadline is not None and time.monotonic() >= deadline:
                return False
            time.sleep(_POLL_S)
        return True

    async def await_for_lock(self, *args: Any, **kwargs: Any) -> bool:
        return self.wait_for_lock(*args, **kwargs)


def _flocked(path: Path, operation: int) -> Optional[int]:
    """A descriptor of `path` (created if need be, else a StoreError) holding flock(2) `operation`; None if held."""
    with store_errors(f"cannot take a lock in {path.parent}"):
        make_folder(path.parent)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, operation)
    except BaseException as error:
        os.close(fd)
        if isinstance(error, BlockingIOError):
            return None
        raise
    return fd


# The store's own lock: runs hold it shared from start to end, gc exclusively (never waiting).
STORE_KEY = "store/in-use"
_RUN_KEYS = "mnist-pipeline:run:"


@contextmanager
def run_in_progress(locks: Any, store: str) -> Iterator[None]:
    """Held by a run from its start to its end: gc removes nothing meanwhile, and a run waits for a gc to end.

    flock: a shared lock on `.locks/store.lock`. Redis: the run's key, set under the store's lock and renewed
    while the run lives; `store` (its bucket, or its folder) names the store among those sharing the Redis.
    """
    if isinstance(locks, FileLockManager):
        fd = _flocked(locks.directory / layout.STORE_LOCK, fcntl.LOCK_SH)  # waits while a gc holds it exclusively
        try:
            yield
        finally:
            os.close(fd)
        return
    key = f"{_RUN_KEYS}{_digest(store)}:{os.getpid()}-{uuid4().hex}"
    ttl = max(1, round(locks.ttl))
    with held(locks, f"{STORE_KEY}/{_digest(store)}"):  # not while a gc runs
        locks.client.set(key, "1", ex=ttl)
    # Set again if it expired while this process was stopped: the run is in progress again once it goes on.
    stop = _renewing(lambda: locks.client.expire(key, ttl) or stop.is_set() or locks.client.set(key, "1", ex=ttl),
                     key, locks.ttl / 3)
    try:
        yield
    finally:
        stop.set()
        locks.client.delete(key)


@contextmanager
def store_exclusively(locks: Any, store: str) -> Iterator[bool]:
    """For gc: True, and held for the block, when no run is in progress; False (nothing held) otherwise."""
    if isinstance(locks, FileLockManager):
        fd = _flocked(locks.directory / layout.STORE_LOCK, fcntl.LOCK_EX | fcntl.LOCK_NB)
        try:
            yield fd is not None
        finally:
            if fd is not None:
                os.close(fd)
        return
    with held(locks, f"{STORE_KEY}/{_digest(store)}"):
        yield not any(True for _ in locks.client.scan_iter(match=f"{_RUN_KEYS}{_digest(store)}:*", count=100))


def _digest(store: str) -> str:
    """The store's name in Redis's keys: a path may hold what SCAN MATCH reads as a pattern (`[`, `*`, `?`, `\\`)."""
    return hashlib.sha256(store.encode()).hexdigest()[:32]


def _renewing(renew: Callable[[], Any], what: str, every: float) -> threading.Event:
    """Calls `renew()` every `every` seconds in a thread, until the event it returns is set."""
    from redis.exceptions import LockNotOwnedError

    def loop() -> None:
        while not stop.wait(every):
            try:
                renew()  # back to the full time to live
            except LockNotOwnedError:  # it expired while this process stalled: another may hold it now
                log.warning("%s expired while held: another run may be computing the same entry, and this one "
                            "stops before it writes to it", what)
                return
            except Exception as error:  # Redis unreachable for a moment: try again at the next turn
                log.warning("could not renew %s: %s", what, error)

    stop = threading.Event()
    threading.Thread(target=loop, daemon=True, name=f"renewal of {what}").start()
    return stop


def renewed_redis_locks(url: str, ttl: float, source: str = REDIS_URL_ENV) -> Any:
    """prefect-redis's RedisLockManager on `url`, its locks expiring `ttl` after their holder dies; else a
    StoreError naming `source` (a URL that is not Redis's, a server that does not answer)."""
    from prefect_redis.locking import RedisLockManager
    from redis.exceptions import LockNotOwnedError, RedisError

    class RenewedRedisLockManager(RedisLockManager):
        """Each lock is taken for `ttl` seconds, renewed every `ttl / 3` while held."""

        def __init__(self, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.ttl = ttl
            self.renewals: dict[str, threading.Event] = {}

        def __getstate__(self) -> dict[str, Any]:
            return {**super().__getstate__(), "ttl": self.ttl}

        def __setstate__(self, state: dict[str, Any]) -> None:
            super().__setstate__(state)
            self.renewals = {}

        def acquire_lock(self, key: str, holder: str, acquire_timeout: Optional[float] = None,
                         hold_timeout: Optional[float] = None) -> bool:
            if self.is_lock_holder(key, holder):
                return True
            if not super().acquire_lock(key, holder, acquire_timeout, hold_timeout=self.ttl):
                return False
            lock = self._locks[self._lock_name_for_key(key)]
            self.renewals[key] = _renewing(lock.reacquire, f"the lock on {key}", self.ttl / 3)
            return True

        async def aacquire_lock(self, *args: Any, **kwargs: Any) -> bool:
            return self.acquire_lock(*args, **kwargs)

        def release_lock(self, key: str, holder: str) -> None:
            if self.is_lock_holder(key, holder):
                self.renewals.pop(key).set()
            try:
                super().release_lock(key, holder)
            except LockNotOwnedError:  # it expired while this process was stopped: nothing left to release
                del self._locks[self._lock_name_for_key(key)]

        def lost(self, key: str) -> bool:
            """True when this process took the lock on `key` and it has since expired (one request to Redis)."""
            lock = self._locks.get(self._lock_name_for_key(key))
            try:
                return lock is not None and not lock.owned()
            except RedisError as error:  # unreachable for a moment: the renewals say so, and go on trying
                log.warning("could not check the lock on %s: %s", key, error)
                return False

    try:
        locks = RenewedRedisLockManager(connection_url=url)
        locks.client.ping()
    except (ValueError, RedisError) as error:  # neither message shows the URL, nor its password
        raise StoreError(f"cannot take this store's locks in the Redis that {source} names: {error}") from error
    return locks


def lost(locks: Any, key: str) -> bool:
    """True when the lock this process took on `key` has expired since: a Redis lock whose holder was stopped
    past its time to live. flock(2) locks (and no locks at all) last as long as their process."""
    return hasattr(locks, "lost") and locks.lost(key)
