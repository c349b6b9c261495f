"""The folders and buckets a worker allows: where runs created from the UI or the API may read and write.

Set by MNIST_PIPELINE_ALLOWED_ROOTS (`make serve` sets the project, Debian's
datasets and what the user adds); unset, everything is allowed, as for a user's
own command line. A path counts where it really leads, links followed.
"""

from __future__ import annotations

import os
from pathlib import Path

from engine import remote
from engine.settings import env_name, settings

ALLOWED_ROOTS_ENV = env_name("allowed_roots")


def _inside(path: str, roots: list[Path]) -> bool:
    return any(Path(os.path.realpath(path)).is_relative_to(root) for root in roots)


def _outside(roots: list[Path]) -> str:
    return (f"outside the folders this worker allows ({', '.join(map(str, roots))}); to allow it, "
            f"add its folder to {ALLOWED_ROOTS_ENV} (folders separated by ':') before `make serve`")


def confine(path: str, links: bool = False) -> None:
    """Refuse `path` when it resolves outside the allowed folders (if any are set).

    With `links`, refuse also a folder holding a symbolic link that leads outside them: every path
    a run opens in the artifact store lies under the store's folder, so none leads out.
    """
    roots = [Path(os.path.realpath(root)) for root in settings().allowed_roots if not root.startswith(remote.SCHEME)]
    if not roots:
        return
    if not _inside(path, roots):
        raise ValueError(f"{path} is {_outside(roots)}")
    for parent, dirs, files in os.walk(path) if links else ():  # links to folders are listed, not followed
        for name in dirs + files:
            link = os.path.join(parent, name)
            if os.path.islink(link) and not _inside(link, roots):
                raise ValueError(f"{path} holds {link}, a link to {os.path.realpath(link)}, which is "
                                 + _outside(roots))


def confine_url(url: str) -> None:
    """Refuse a bucket address outside the allowed `s3://bucket/prefix` roots (when any roots are set)."""
    allowed = settings().allowed_roots
    buckets = [remote.SCHEME + remote.bucket_path(root) for root in allowed if root.startswith(remote.SCHEME)]
    address = remote.SCHEME + remote.bucket_path(url)  # `s3://team//mnist/` is `s3://team/mnist`
    if allowed and not any(address == bucket or address.startswith(f"{bucket}/") for bucket in buckets):
        raise ValueError(f"{url} is outside the buckets this worker allows ({', '.join(buckets) or 'none'}); "
                         f"to allow it, add its s3://bucket/prefix to {ALLOWED_ROOTS_ENV} before `make serve`")


def confine_store(artifacts_dir: str) -> None:
    """Refuse a store outside the allowed folders and buckets, or holding a link that leads outside them."""
    if artifacts_dir.startswith(remote.SCHEME):  # a bucket: its prefix must be an allowed one
        confine_url(artifacts_dir)
        # The run writes to this host's copy of it: checked like any store (not made here).
        confine(str(remote.copy_path(artifacts_dir)), links=True)
        return
    confine(artifacts_dir, links=True)
    bucket = remote.copied_url(Path(artifacts_dir))  # a bucket's copy, named by its folder
    if bucket is not None:
        confine_url(bucket)
