"""PostgreSQL and Redis of the project's own, from Debian's packages, on 127.0.0.1, with passwords.

`make serve DB=postgres` and `make serve REDIS=1` start them in folders under
$PREFECT_HOME, the tests in temporary ones; each keeps all its files in its folder.

    python -m ops.services postgres|redis start FOLDER PORT   # prints the connection URL
    python -m ops.services postgres|redis stop FOLDER
    python -m ops.services process stop NAME PID               # a process of make serve's, with all it started
    python -m ops.services process listening NAME PID PORT     # waits until that process serves PORT
"""

from __future__ import annotations

import glob
import os
import pwd
import secrets
import shutil
import subprocess
import sys
import time
from contextlib import suppress
from pathlib import Path
from typing import Any, Callable, Optional

import psutil

DATABASE = "prefect"
_POSTGRES_USER = "postgres"  # Debian's account for the server, when this process is root


class ServiceError(RuntimeError):
    """A service did not start; the message says why."""


def _postgres_bin(program: str) -> str:
    found = shutil.which(program) or next(iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{program}"),
                                                      reverse=True)), None)
    if found is None:
        raise ServiceError(f"{program} not found: install Debian's postgresql (make system-deps)")
    return found


def _as_server_user(folder: Path) -> Callable[[list[str]], list[str]]:
    """PostgreSQL refuses to run as root: then its commands run as Debian's `postgres` account."""
    if os.geteuid() != 0:
        return lambda command: command
    account = pwd.getpwnam(_POSTGRES_USER)
    os.chown(folder, account.pw_uid, account.pw_gid)
    return lambda command: ["runuser", "-u", _POSTGRES_USER, "--", *command]


def _run(command: list[str], env: Optional[dict[str, str]] = None) -> None:
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise ServiceError(f"{Path(command[-1]).name if command else ''} failed: "
                           f"{(done.stderr or done.stdout).strip().splitlines()[-1:]}")


def _password(path: Path) -> str:
    """The service's password, made on first use and readable by its owner only."""
    if not path.is_file():
        path.touch(mode=0o600)
        path.write_text(secrets.token_urlsafe(24))
    return path.read_text().strip()


def start_postgres(folder: Path, port: int) -> str:
    """A cluster in `folder` on 127.0.0.1:`port`, a `prefect` database behind a password; returns its connection URL."""
    folder = Path(folder).resolve()
    data = folder / "data"
    folder.mkdir(parents=True, exist_ok=True)
    password = _password(folder / "password")
    run_as = _as_server_user(folder)
    if not (data / "PG_VERSION").is_file():
        pwfile = folder / "initdb.pw"
        pwfile.write_text(password)
        os.chmod(pwfile, 0o644)  # initdb, as the server's account, reads it once
        try:
            _run(run_as([_postgres_bin("initdb"), "--pgdata", str(data), "--username", _POSTGRES_USER,
                         "--auth", "scram-sha-256", "--pwfile", str(pwfile), "--encoding", "UTF8",
                         "--no-instructions"]))
        finally:
            pwfile.unlink()
    options = f"-c listen_addresses=127.0.0.1 -c port={port} -c unix_socket_directories={folder}"
    _run(run_as([_postgres_bin("pg_ctl"), "--pgdata", str(data), "--log", str(folder / "postgres.log"),
                 "--options", options, "--wait", "start"]))
    client = {**os.environ, "PGPASSWORD": password}
    exists = subprocess.run([_postgres_bin("psql"), "-h", "127.0.0.1", "-p", str(port), "-U", _POSTGRES_USER,
                             "-d", "postgres", "-tAc", f"SELECT 1 FROM pg_database WHERE datname = '{DATABASE}'"],
                            capture_output=True, text=True, env=client)
    if exists.stdout.strip() != "1":
        _run([_postgres_bin("createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", _POSTGRES_USER, DATABASE],
             env=client)
    return f"postgresql+asyncpg://{_POSTGRES_USER}:{password}@127.0.0.1:{port}/{DATABASE}"


def stop_postgres(folder: Path) -> None:
    folder = Path(folder).resolve()
    if (folder / "data" / "postmaster.pid").is_file():
        _run(_as_server_user(folder)([_postgres_bin("pg_ctl"), "--pgdata", str(folder / "data"),
                                      "--mode", "fast", "--wait", "stop"]))


def start_redis(folder: Path, port: int) -> str:
    """A Redis server on 127.0.0.1:`port` that keeps nothing on disk, behind a password; returns its redis:// URL."""
    folder = Path(folder).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    server = shutil.which("redis-server")
    if server is None:
        raise ServiceError("redis-server not found: install Debian's redis-server (make system-deps)")
    password = _password(folder / "password")
    config = folder / "redis.conf"  # the password in a file of its owner's, not on the command line
    config.touch(mode=0o600)
    config.write_text(f"requirepass {password}\n")
    _run([server, str(config), "--bind", "127.0.0.1", "--port", str(port), "--dir", str(folder),
          "--daemonize", "yes", "--pidfile", str(folder / "redis.pid"), "--logfile", str(folder / "redis.log"),
          "--save", "", "--appendonly", "no"])
    url = f"redis://:{password}@127.0.0.1:{port}/0"
    import redis

    client = redis.Redis.from_url(url)
    for _ in range(100):
        try:
            client.ping()
            return url
        except redis.ConnectionError:
            time.sleep(0.1)
    raise ServiceError(f"redis-server did not answer on 127.0.0.1:{port}; see {folder / 'redis.log'}")


def stop_redis(folder: Path) -> None:
    pidfile = Path(folder).resolve() / "redis.pid"
    try:
        pid = int(pidfile.read_text())
    except (OSError, ValueError):
        return
    with suppress(psutil.NoSuchProcess, psutil.TimeoutExpired):
        process = psutil.Process(pid)
        if "redis-server" in " ".join(process.cmdline()):  # still ours
            process.terminate()
            process.wait(timeout=5)
    pidfile.unlink(missing_ok=True)


def stop_process(name: str, pid: int, grace_s: float = 15) -> str:
    """End `make serve`'s process `pid` and every process it started: SIGTERM, then SIGKILL after `grace_s`.

    Prefect starts each flow run in a session of its own, so a process group
    alone would leave a running flow run behind. A leader that died and left
    its group behind: the group is ended.
    """
    try:
        leader = psutil.Process(pid)
        tree = [leader, *leader.children(recursive=True)]
    except psutil.NoSuchProcess:
        leader, tree = None, [p for p in psutil.process_iter() if _group(p) == pid]
    if not tree:
        return f"{name} (pid {pid}) had ended"
    for process in tree:
        with suppress(psutil.NoSuchProcess):
            process.terminate()
    # Prefect's worker turns SIGTERM into a graceful shutdown that can hang when idle: once
    # what it started has ended, nothing is lost by not waiting for it longer than 2 s.
    patient = [p for p in tree if not (name == "worker" and p is leader)]
    _, alive = psutil.wait_procs(patient, timeout=grace_s)
    alive += psutil.wait_procs([p for p in tree if p not in patient], timeout=2)[1]
    for process in alive:
        with suppress(psutil.NoSuchProcess):
            process.kill()
    if not alive:
        return f"stopped {name} (pid {pid})"
    if alive == [leader]:
        return f"stopped {name} (pid {pid}; killed after SIGTERM)"
    return f"killed {name} (pid {pid}) and what it started: still running {grace_s:.0f} s after SIGTERM"


def wait_listening(name: str, pid: int, port: int, timeout_s: float = 60) -> None:
    """Return once process `pid` listens on `port`; ServiceError if it exits first or never does.
    (Something else on that port answers connections too: only the process's own socket counts.)"""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            process = psutil.Process(pid)
            exited = process.status() == psutil.STATUS_ZOMBIE
            sockets = [] if exited else process.net_connections(kind="tcp")
        except psutil.NoSuchProcess:
            exited = True
        if exited:
            raise ServiceError(f"{name} exited before it served port {port}")
        if any(s.status == psutil.CONN_LISTEN and s.laddr.port == port for s in sockets):
            return
        time.sleep(0.2)
    raise ServiceError(f"{name} did not serve port {port} within {timeout_s:.0f} s")


def _group(process: Any) -> Optional[int]:
    try:
        return os.getpgid(process.pid)
    except OSError:
        return None


def main(argv: list[str]) -> int:
    service, action, folder, *rest = argv
    try:
        if service == "process" and action == "listening":  # process listening NAME PID PORT
            wait_listening(folder, int(rest[0]), int(rest[1]))
        elif service == "process":  # process stop NAME PID
            print(stop_process(folder, int(rest[0])))
        elif action == "start":
            start = {"postgres": start_postgres, "redis": start_redis}[service]
            print(start(Path(folder), int(rest[0])))
        else:
            {"postgres": stop_postgres, "redis": stop_redis}[service](Path(folder))
    except ServiceError as error:
        print(f"{service}: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
