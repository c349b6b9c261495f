"""The versions of the libraries whose numerics or data a stage's output depends on: part of its key."""

from __future__ import annotations

import importlib.metadata
import platform
from functools import lru_cache
from typing import Iterable


@lru_cache(maxsize=None)
def library_versions(names: Iterable[str]) -> dict[str, str]:
    """Python's version and those of `names` (distribution names) that are installed."""
    versions = {"python": platform.python_version()}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions
