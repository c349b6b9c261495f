"""Prefect homes for the servers the tests start, their database already migrated.

A Prefect server's first start in a new home creates its SQLite database and
runs every migration: about 20 s here, against about 8 s for a later start.
The suite starts a dozen servers in homes of their own. Each new home gets a
copy of one database that each test lane (process) migrated once, with Prefect's own
command, so its server starts as it does for a user the second time. The
first start that users see (`make serve` on a fresh clone) keeps a test of its
own: the `served` fixture of test_deployments.py starts in an empty home.
"""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import sys
import tempfile
from functools import lru_cache
from pathlib import Path

# Where Prefect keeps its database unless a connection URL says otherwise.
DATABASE = "prefect.db"


@lru_cache(maxsize=None)
def _migrated() -> Path:
    home = Path(tempfile.mkdtemp(prefix="prefect-db-template-"))
    atexit.register(shutil.rmtree, home, ignore_errors=True)
    env = {**os.environ, "PREFECT_HOME": str(home)}
    for name in ("PREFECT_API_DATABASE_CONNECTION_URL", "PREFECT_SERVER_DATABASE_CONNECTION_URL"):
        env.pop(name, None)
    subprocess.run([str(Path(sys.executable).parent / "prefect"), "server", "database", "upgrade", "-y"],
                   env=env, check=True, capture_output=True, timeout=600)
    return home / DATABASE


def prefect_home(home: Path) -> Path:
    """`home`, made, with a migrated copy of Prefect's database in it unless it has one already."""
    home.mkdir(parents=True, exist_ok=True)
    if not (home / DATABASE).exists():
        shutil.copyfile(_migrated(), home / DATABASE)
    return home
