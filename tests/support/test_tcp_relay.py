"""The relay the multi-site tests put on the hospitals' path: it delays, counts per hospital, cuts, refuses.

Runs the real relay script on loopback (no namespaces, no root): 127.0.0.1 stands for one hospital.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fedcare.processes import free_port
from tests.support.netns import RELAY_SCRIPT

DELAY = 0.05


def _echo_server() -> tuple[socket.socket, int]:
    server = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            threading.Thread(target=_echo, args=(conn,), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    return server, server.getsockname()[1]


def _echo(conn: socket.socket) -> None:
    with conn:
        try:
            while data := conn.recv(65536):
                conn.sendall(data)
        except OSError:
            pass


@pytest.fixture
def relay(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], int, Path]]:
    server, target = _echo_server()
    port, counters = free_port(), tmp_path / "counters.json"
    args = [sys.executable, str(RELAY_SCRIPT), "--listen", f"127.0.0.1:{port}", "--target", f"127.0.0.1:{target}"]
    args += ["--site", "127.0.0.1=hospital-x", "--delay", str(DELAY), "--outage", "1.0", "--counters", str(counters)]
    proc = subprocess.Popen(args)
    deadline = time.monotonic() + 20
    while not counters.exists():
        assert proc.poll() is None and time.monotonic() < deadline, "the relay did not start"
        time.sleep(0.05)
    yield proc, port, counters
    proc.terminate()
    proc.wait(timeout=10)
    server.close()


def _round_trip(sock: socket.socket, payload: bytes) -> float:
    started = time.monotonic()
    sock.sendall(payload)
    received = b""
    while len(received) < len(payload):
        received += sock.recv(65536)
    assert received == payload
    return time.monotonic() - started


def test_relay_delays_each_way_counts_per_hospital_then_cuts_and_refuses_during_the_outage(
    relay: tuple[subprocess.Popen[bytes], int, Path],
) -> None:
    proc, port, counters = relay
    with socket.create_connection(("127.0.0.1", port)) as sock:
        assert _round_trip(sock, b"x" * 1000) >= 2 * DELAY
        proc.send_signal(signal.SIGUSR1)  # cut every open connection now
        time.sleep(0.3)
        with pytest.raises(ConnectionResetError):  # reset (RST), not closed politely (EOF)
            sock.recv(1)
    with socket.create_connection(("127.0.0.1", port)) as refused:  # within the 1 s outage
        with pytest.raises(ConnectionResetError):
            refused.recv(1)
    time.sleep(1.1)
    with socket.create_connection(("127.0.0.1", port)) as again:
        _round_trip(again, b"z" * 500)
    time.sleep(0.6)  # counters are written twice a second
    site = json.loads(counters.read_text())["sites"]["hospital-x"]
    assert site == {"up": 1500, "down": 1500, "connections": 2, "cuts": 1, "refused": 1}
