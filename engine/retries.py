"""Which stage failures are worth another try, and how the stages retry.

Transient: a read error, a mirror file shorter than its header promises (still
being copied), an unreachable download server, GPU out-of-memory. Deterministic,
never retried: invalid settings, a malformed file, a full or read-only store.
"""

from __future__ import annotations

import errno
import threading
from typing import Any, NoReturn

from engine.store import StoreError

# Errors of the machine, not of the moment: another try meets them again.
_LASTING_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOTDIR, errno.EISDIR}


# Set once the command line's run is interrupted (SIGINT, Ctrl-C). Python 3.11 turns a
# KeyboardInterrupt raised while a class is being made (a module imported lazily, say)
# into a RuntimeError, which a stage would report as its failure: with this set, no
# failure is retried and no further stage starts.
INTERRUPTED = threading.Event()


def interrupt(signum: int, frame: Any) -> NoReturn:
    """SIGINT's handler in the command line: Python's own (KeyboardInterrupt), remembered in INTERRUPTED."""
    INTERRUPTED.set()
    raise KeyboardInterrupt


class TransientError(RuntimeError):
    """A failure that may pass by itself; the stage is tried again."""


class PermanentError(ValueError):
    """A failure that another try meets again (a malformed file, a diverged training): never retried."""


def is_transient(error: BaseException) -> bool:
    if isinstance(error, TransientError):
        return True
    if isinstance(error, (PermanentError, StoreError)):
        return False
    if isinstance(error, OSError):
        return error.errno not in _LASTING_ERRNOS
    # TensorFlow's GPU out-of-memory, named so TensorFlow need not be imported here.
    return type(error).__name__ == "ResourceExhaustedError"


def worth_retrying(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect's `retry_condition_fn`: retry transient failures only, and nothing once the run is interrupted."""
    if INTERRUPTED.is_set():
        return False
    error = state.data if isinstance(state.data, BaseException) else state.result(raise_on_failure=False)
    return isinstance(error, BaseException) and is_transient(error)
