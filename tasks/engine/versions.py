"""The versions of the libraries whose numerics or data a stage's output depends on: part of every key."""

from __future__ import annotations

import importlib.metadata
import platform
from functools import lru_cache

_LIBRARIES = ("tensorflow", "tensorflow-cpu", "keras", "tensorflow-datasets", "numpy", "h5py",
              "pandas", "matplotlib", "pillow", "tabulate", "jinja2", "markdown")


@lru_cache(maxsize=None)
def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in _LIBRARIES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions
