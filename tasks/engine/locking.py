"""A Prefect lock manager on flock(2): a dead holder never leaves a stale lock.

Prefect's SERIALIZABLE isolation takes a lock on a stage's cache key before it
computes, so two runs with the same inputs compute once: the second waits, then
finds the record and is served from cache. Prefect's own FileSystemLockManager
marks a lock with a file that outlives a killed process; here the kernel
releases the lock the moment its holder's process ends, however it ends.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import time
from pathlib import Path
from typing import Optional, Union

from tasks.engine.store import StoreError

_POLL_S = 0.1


class FileLockManager:
    """Implements `prefect.locking.protocol.LockManager` with one lock file per key."""

    def __init__(self, directory: Union[str, os.PathLike[str]]):
        self.directory = Path(directory)
        # key -> (holder, file descriptor that holds the lock)
        self._held: dict[str, tuple[str, int]] = {}

    def open(self) -> "FileLockManager":
        """Create the lock folder; a clear error if something else is in its place.

        Locks that could not be taken would let two runs build one entry at once.
        """
        try:
            if self.directory.exists() and not self.directory.is_dir():
                raise NotADirectoryError(errno.ENOTDIR, "Not a directory")
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise StoreError(f"cannot keep locks in {self.directory}: {err.strerror or err}") from err
        return self

    def _path(self, key: str) -> Path:
        # Keys hold slashes (`train/<fingerprint>/result.json`): hash to a flat name.
        return self.directory / f"{hashlib.sha256(key.encode()).hexdigest()[:32]}.lock"

    def _try_lock(self, key: str) -> Optional[int]:
        self.directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(self._path(key), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        return fd

    def acquire_lock(
        self,
        key: str,
        holder: str,
        acquire_timeout: Optional[float] = None,
        hold_timeout: Optional[float] = None,
    ) -> bool:
        """Wait for the lock (for ever by default); `hold_timeout` is moot, see above."""
        if self.is_lock_holder(key, holder):
            return True
        deadline = None if acquire_timeout is None else time.monotonic() + acquire_timeout
        while (fd := self._try_lock(key)) is None:
            if deadline is not None and time.monotonic() >= deadline:
                return False
            time.sleep(_POLL_S)
        os.ftruncate(fd, 0)
        os.write(fd, f"{holder}\n".encode())  # for people looking at the folder
        self._held[key] = (holder, fd)
        return True

    async def aacquire_lock(
        self,
        key: str,
        holder: str,
        acquire_timeout: Optional[float] = None,
        hold_timeout: Optional[float] = None,
    ) -> bool:
        return self.acquire_lock(key, holder, acquire_timeout, hold_timeout)

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
        fd = self._try_lock(key)
        if fd is None:
            return True
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
        return False

    def is_lock_holder(self, key: str, holder: str) -> bool:
        return key in self._held and self._held[key][0] == holder

    def wait_for_lock(self, key: str, timeout: Optional[float] = None) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.is_locked(key):
            if deadline is not None and time.monotonic() >= deadline:
                return False
            time.sleep(_POLL_S)
        return True

    async def await_for_lock(self, key: str, timeout: Optional[float] = None) -> bool:
        return self.wait_for_lock(key, timeout)
