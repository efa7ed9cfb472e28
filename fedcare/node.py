"""A hospital's node: its SuperNode and its warm ClientApp executor, started and stopped as one.

The SuperNode runs Flower's own main with fast waits (`fedcare.fast_supernode`) and
`--isolation process`, so it starts no executor of its own; the warm executor (`fedcare.warm_executor`)
serves its ClientApp tasks. Both are children of this process: SIGTERM or Ctrl-C stops both; when the
SuperNode exits the executor is stopped and its exit code is ours, so a supervisor (compose's restart
policy, systemd, `LocalFederation`) sees the SuperNode's outcome: `NODE_REFUSED_EXIT` (77) when the
SuperLink refuses the node's key for good (revoked; systemd: `RestartPreventExitStatus=77`).
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from common.table_files import is_parquet
from fedcare.fast_supernode import NODE_REFUSED_EXIT, wait_args
from fedcare.flower_internals import SuperNodeWaits
from fedcare.node_sockets import socket_dir

log = logging.getLogger("fedcare.node")
RUNTIME_PORT = 9094  # Flower's default for the SuperNode's runtime API (loopback only)


@dataclass(frozen=True)
class NodeOptions:
    superlink: str  # the SuperLink's Fleet API, host:port
    node_config: dict[str, Any]
    ca_certificate: Path | None = None  # None: no TLS (debugging only)
    private_key: Path | None = None
    runtime_port: int = RUNTIME_PORT
    waits: SuperNodeWaits = field(default_factory=SuperNodeWaits)
    executor_poll: float = 0.5  # a fallback: the SuperNode tells the executor when a task waits
    message_timeout: float = 300.0
    torch_threads: int = 1  # per ClientApp; 0: torch's default (fedcare.warm_executor says why 1)
    notify_socket: str | None = None  # set by run_node

    def to_json(self) -> str:
        return json.dumps(
            {**asdict(self), "ca_certificate": _str(self.ca_certificate), "private_key": _str(self.private_key)}
        )

    @classmethod
    def from_json(cls, text: str) -> NodeOptions:
        raw = json.loads(text)
        paths = {k: None if raw[k] is None else Path(raw[k]) for k in ("ca_certificate", "private_key")}
        return cls(**{**raw, **paths, "waits": SuperNodeWaits(**raw["waits"])})

    @property
    def runtime_address(self) -> str:
        return f"127.0.0.1:{self.runtime_port}"

    def supernode_command(self) -> list[str]:
        pairs = " ".join(f"{k}={json.dumps(v)}" for k, v in self.node_config.items())
        args = [
            sys.executable,
            "-m",
            "fedcare.fast_supernode",
            *wait_args(self.waits),
            *([] if self.notify_socket is None else ["--notify-socket", self.notify_socket]),
            "--",
            "--superlink",
            self.superlink,
            "--isolation",
            "process",  # the warm executor serves its tasks
            "--host",
            "127.0.0.1",
            "--port",
            str(self.runtime_port),
            "--node-config",
            pairs,
        ]
        if self.ca_certificate is None:
            return [*args, "--insecure"]
        args += ["--root-certificates", str(self.ca_certificate)]
        if self.private_key is not None:
            args += ["--auth-supernode-private-key", str(self.private_key)]
        return args

    def executor_command(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "fedcare.warm_executor",
            "--runtime-address",
            self.runtime_address,
            "--poll",
            str(self.executor_poll),
            "--message-timeout",
            str(self.message_timeout),
            "--torch-threads",
            str(self.torch_threads),
            *([] if self.notify_socket is None else ["--notify-socket", self.notify_socket]),
            *(["--parquet"] if is_parquet(self.node_config.get("data-path", "")) else []),
        ]


def _str(path: Path | None) -> str | None:
    return None if path is None else str(path)


def _environment() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("FLWR_TELEMETRY_ENABLED", "0")  # hospital nodes must not phone home
    env.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def _stop(procs: list[subprocess.Popen[bytes]], *, grace: float) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace
    for proc in procs:
        try:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            log.warning("pid %d ignored SIGTERM for %.0f s; killing it", proc.pid, grace)
            proc.kill()
            proc.wait()


def run_node(options: NodeOptions, *, grace: float = 10.0) -> int:
    """Run the SuperNode and the warm executor until a signal or the SuperNode's exit; the exit code."""
    stop = {"signal": 0}

    def on_signal(signum: int, _frame: object) -> None:
        stop["signal"] = signum

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    env = _environment()
    sockets = socket_dir()  # private (0700): only we may wake the executor
    options = replace(options, notify_socket=os.path.join(sockets.name, "tasks.sock"))
    for command in (options.supernode_command(), options.executor_command()):
        log.info("$ %s", shlex.join(command))  # which flags ran (TLS, node key) is the first thing to check
    supernode = subprocess.Popen(options.supernode_command(), env=env, stdin=subprocess.DEVNULL)
    executor = subprocess.Popen(options.executor_command(), env=env, stdin=subprocess.DEVNULL)
    log.info("SuperNode pid %d, warm executor pid %d", supernode.pid, executor.pid)
    try:
        while not stop["signal"]:
            if supernode.poll() == NODE_REFUSED_EXIT:
                log.error("the SuperLink refuses this node (revoked, or not registered); the node stops")
                _stop([executor], grace=grace)
                return NODE_REFUSED_EXIT
            if supernode.poll() is not None:
                log.warning("the SuperNode exited with code %d; stopping the executor", supernode.returncode)
                _stop([executor], grace=grace)
                return supernode.returncode
            if executor.poll() is not None:
                log.error("the warm executor exited with code %d; restarting it", executor.returncode)
                time.sleep(1.0)
                executor = subprocess.Popen(options.executor_command(), env=env, stdin=subprocess.DEVNULL)
            time.sleep(0.1)
        log.info("%s: stopping the SuperNode and the warm executor", signal.Signals(stop["signal"]).name)
        return 0
    finally:
        _stop([executor, supernode], grace=grace)
        sockets.cleanup()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def main() -> None:
    """`python -m fedcare.node OPTIONS_JSON`: what `fedcare node start` execs into, so the process that
    stays up for the node's whole life holds no more than this module (the full CLI costs 200 MB)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    sys.exit(run_node(NodeOptions.from_json(sys.argv[1])))


if __name__ == "__main__":
    main()
