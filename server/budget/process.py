"""Run the budget service as a real process (uvicorn on 127.0.0.1), for tests, benchmarks and the demo.

With `tls` it serves HTTPS with those files, and the health check trusts only their CA; without,
it asks for plain HTTP by name (`FEDCARE_BUDGET_INSECURE_HTTP=1`), which suits a loopback-only service.
"""

from __future__ import annotations

import os
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import httpx

from common.tls import TlsFiles

REPO_ROOT = Path(__file__).resolve().parents[2]  # the folder holding the `server` package


class BudgetServiceStartError(RuntimeError):
    """The service process exited or did not answer /healthz in time; the message has its log's tail."""


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def stop_process(proc: subprocess.Popen, *, grace: float = 10.0) -> None:
    """SIGTERM, then SIGKILL after `grace` seconds."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


@contextmanager
def running_budget_service(
    *,
    database_url: str,
    admin_token: str,
    port: int | None = None,
    host: str = "127.0.0.1",
    log_path: Path | None = None,
    development: bool = False,
    startup_timeout: float = 60.0,
    log_level: str = "info",
    workers: int = 1,
    wait_for_accounting: bool = False,
    tls: TlsFiles | None = None,
    prefix: Sequence[str] = (),
) -> Iterator[str]:
    """Start `fedcare budget serve` in a child process, wait for /healthz, yield its URL; stop it on exit.

    The admin token travels in the child's environment, never on its command line.
    `wait_for_accounting` also waits until Opacus is loaded (benchmarks: no import in the timings).
    `prefix` places the process (e.g. `ip netns exec NS`); the caller must be able to reach `host` itself.
    """
    own_log = log_path is None
    if log_path is None:
        fd, name = tempfile.mkstemp(prefix="fedcare-budget-", suffix=".log")
        os.close(fd)
        log_path = Path(name)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    port = port or free_port(host)
    url = f"{'https' if tls else 'http'}://{host}:{port}"
    env = {
        **{
            k: v
            for k, v in os.environ.items()
            if k != "PROMETHEUS_MULTIPROC_DIR" and not k.startswith("FEDCARE_BUDGET_")
        },
        "FEDCARE_ADMIN_TOKEN": admin_token,
        "FEDCARE_BUDGET_DATABASE_URL": database_url,
        "FEDCARE_BUDGET_DEVELOPMENT": "1" if development else "0",
        "PYTHONPATH": os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p),
    }
    if tls is None:
        env["FEDCARE_BUDGET_INSECURE_HTTP"] = "1"
    else:
        env["FEDCARE_BUDGET_TLS_CERTFILE"] = str(tls.server_certificate)
        env["FEDCARE_BUDGET_TLS_KEYFILE"] = str(tls.server_key)
    command = [
        *prefix,
        sys.executable,
        "-m",
        "fedcare.budget_cli",
        "serve",
        "--host",
        host,
        "--port",
        str(port),
        "--log-level",
        log_level,
        "--workers",
        str(workers),
    ]
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, stdin=subprocess.DEVNULL)
    try:
        _wait_healthy(
            proc,
            url,
            log_path,
            timeout=startup_timeout,
            accounting=wait_for_accounting,
            fresh_connections=workers > 1,
            verify=ssl.create_default_context(cafile=str(tls.ca_certificate)) if tls else True,
        )
        yield url
    finally:
        stop_process(proc)
        if own_log:
            log_path.unlink(missing_ok=True)


def _wait_healthy(
    proc: subprocess.Popen,
    url: str,
    log_path: Path,
    *,
    timeout: float,
    accounting: bool,
    fresh_connections: bool,
    verify: ssl.SSLContext | bool,
) -> None:
    deadline = time.monotonic() + timeout
    ready_in_a_row = 0  # with several workers each answers for itself: ask a few times, on fresh connections
    # One kept-alive connection otherwise: while the service imports Opacus (holding the GIL), a TLS handshake per
    # question took longer than the question's timeout on a loaded machine.
    headers = {"Connection": "close"} if fresh_connections else {}
    with httpx.Client(timeout=5.0, verify=verify) as http:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise BudgetServiceStartError(
                    f"the budget service exited with code {proc.returncode} before answering; "
                    f"its log:\n{_tail(log_path)}"
                )
            try:
                response = http.get(f"{url}/healthz", headers=headers)
                ready = response.status_code == 200 and (not accounting or response.json()["accounting"] == "ready")
            except httpx.TransportError:
                ready = False
            ready_in_a_row = ready_in_a_row + 1 if ready else 0
            if ready_in_a_row >= (8 if accounting else 1):
                return
            time.sleep(0.05 if ready else 0.1)
    stop_process(proc)
    raise BudgetServiceStartError(
        f"the budget service did not answer {url}/healthz within {timeout:.0f} s; its log:\n{_tail(log_path)}"
    )
