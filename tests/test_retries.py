"""Which failures a stage tries again: those of the moment, never those of the machine or the input."""

import errno

import pytest

from engine.retries import PermanentError, TransientError, is_transient
from engine.store import StoreError


class ResourceExhaustedError(Exception):
    """TensorFlow's GPU out-of-memory, by its name: retries never import TensorFlow to know it."""


@pytest.mark.parametrize("error, transient", [
    (TransientError("a mirror file still being copied"), True),
    (OSError(errno.EIO, "Input/output error"), True),
    (ResourceExhaustedError("OOM when allocating tensor"), True),
    (PermanentError("a malformed file"), False),
    (StoreError("the store is full"), False),
    (OSError(errno.ENOSPC, "No space left on device"), False),
    (OSError(errno.EROFS, "Read-only file system"), False),
    (ValueError("a bug"), False),
])
def test_only_failures_of_the_moment_are_tried_again(error, transient):
    assert is_transient(error) is transient
