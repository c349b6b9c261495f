"""The ports `make serve` and the temporary server take, and how `make serve` knows a server is up."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from ops.services import ServiceError, wait_listening
from ops.temporary_server import free_port

LISTEN = "import socket, sys, time; s = socket.socket(); s.bind(('127.0.0.1', int(sys.argv[1]))); s.listen(); time.sleep(60)"


def test_a_free_port_lies_below_the_ports_outgoing_connections_are_given():
    # A client's connection can take a port from that range before the server that asked for it binds it.
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    ports = {free_port() for _ in range(20)}
    assert all(1024 <= port < low for port in ports)
    assert len(ports) > 1
    for port in ports:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", port))


def test_serve_waits_for_the_process_itself_to_listen():
    port = free_port()
    server = subprocess.Popen([sys.executable, "-c", LISTEN, str(port)])
    try:
        wait_listening("reports", server.pid, port, timeout_s=30)
    finally:
        server.kill()
        server.wait()


def test_a_server_whose_port_is_taken_is_reported_not_taken_for_the_one_that_answers():
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        server = subprocess.Popen([sys.executable, "-c", LISTEN, str(port)], stderr=subprocess.DEVNULL)
        try:
            with pytest.raises(ServiceError, match=f"^reports exited before it served port {port}$"):
                wait_listening("reports", server.pid, port, timeout_s=30)
        finally:
            server.kill()
            server.wait()


def test_a_server_that_never_listens_is_given_up_on():
    idle = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        with pytest.raises(ServiceError, match="did not serve port .* within 1 s"):
            wait_listening("reports", idle.pid, free_port(), timeout_s=1)
    finally:
        idle.kill()
        idle.wait()
