"""The Prefect server a command-line run reports to: `make serve`'s, or a temporary one.

With `make serve` up, a run reports to its server: it shows in the UI and pays no start-up. Otherwise
Prefect would start a temporary server itself, which a run killed by SIGKILL or SIGTERM leaves running;
the one here is the same application, started with the kernel's parent-death signal: it ends with the run.
"""

from __future__ import annotations

import atexit
import ctypes
import os
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import suppress
from functools import partial
from pathlib import Path
from typing import Any, Optional

_PR_SET_PDEATHSIG = 1


class ServerError(RuntimeError):
    """The temporary server did not come up."""


def free_port() -> int:
    """A port nothing listens on, below the range the system gives outgoing connections: a port from
    that range can be taken by a client's connection before the server that asked for it binds it."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    for _ in range(200):
        port = random.randrange(max(1024, low - 10000), max(1025, low))
        with socket.socket() as probe:
            with suppress(OSError):
                probe.bind(("127.0.0.1", port))
                return port
    with socket.socket() as probe:  # a crowded range: any port the system gives
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _healthy(api_url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{api_url}/health", timeout=2) as answer:
            return answer.status == 200
    except OSError:
        return False


def _die_with(parent: int) -> None:
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the parent ended before the signal was armed
        os._exit(1)


def served_api_url() -> Optional[str]:
    """The API of `make serve`'s server for this Prefect home, if it answers; its reports then link as the worker's."""
    run_dir = Path(os.environ.get("PREFECT_HOME", ".prefect")) / "run"
    try:
        url = f"http://127.0.0.1:{int((run_dir / 'server.port').read_text())}/api"
    except (OSError, ValueError):
        return None
    if not _healthy(url):
        return None
    with suppress(OSError):
        for line in (run_dir / "reports.env").read_text().splitlines():
            name, _, value = line.partition("=")
            os.environ.setdefault(name, value)
    return url


def app() -> Any:
    """Prefect's API as Prefect's own temporary server runs it: no UI, no background services."""
    from prefect.server.api.server import create_app

    return create_app(ephemeral=True, final=True)


class TemporaryServer:
    """Prefect's API (no UI) on a free loopback port, as a child that dies with this process."""

    def __init__(self) -> None:
        self.port = free_port()
        self.api_url = f"http://127.0.0.1:{self.port}/api"
        env = {**os.environ, "PREFECT_UI_ENABLED": "0"}
        env.pop("PREFECT_API_URL", None)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "--factory", "ops.temporary_server:app",
             "--host", "127.0.0.1", "--port", str(self.port), "--log-level", "error", "--lifespan", "on"],
            env=env, stdin=subprocess.DEVNULL, preexec_fn=partial(_die_with, os.getpid()),
        )
        atexit.register(self.stop)

    def wait_until_healthy(self, timeout_s: float = 180) -> None:
        """A first start creates and migrates the database: about 26 s here, more on a slow disk."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ServerError(f"Prefect's temporary server exited with status {self.process.returncode}")
            if _healthy(self.api_url):
                return
            time.sleep(0.2)
        raise ServerError(f"Prefect's temporary server did not answer within {timeout_s:.0f} s")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
