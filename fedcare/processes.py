"""The OS processes a local federation owns: started with a log each, waited for, stopped with their children.

Every process is started in its own session (Ctrl-C in the terminal reaches us, and we stop them in
order) and remembered in `seen_pids`, children included, so tests can check none outlived the federation.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import psutil

log = logging.getLogger("fedcare.federation")


class FederationError(RuntimeError):
    """A federation process failed to start or a run could not be submitted."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def tcp_open(host: str, port: int) -> bool:
    """Whether `host:port` accepts a TCP connection from this process."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        return sock.connect_ex((host, port)) == 0


def console_script(name: str) -> str:
    """The console script next to this interpreter, so a venv works without activation."""
    candidate = Path(sys.executable).with_name(name)
    return str(candidate) if candidate.exists() else name


def flower_env(home: Path, **extra: str) -> dict[str, str]:
    """The environment of a Flower process with its own FLWR_HOME."""
    home.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env.update(
        FLWR_HOME=str(home),
        FLWR_TELEMETRY_ENABLED="0",  # hospital deployments must not phone home
        FLWR_DISABLE_UPDATE_CHECK="1",
        PYTHONUNBUFFERED="1",
        # Flower starts helpers (flower-superexec, flwr-serverapp) by name: find this venv's first,
        # also when the venv was never activated (CI, `make`).
        PATH=os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")]),
        **extra,
    )
    return env


@dataclass
class ManagedProcess:
    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    log_offset: int = 0  # where this process's output starts in a log shared with earlier runs of it

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def log_text(self) -> str:
        """This run's output so far (not earlier runs' in the same log)."""
        with self.log_path.open("rb") as handle:
            handle.seek(self.log_offset)
            return handle.read().decode(errors="replace")


@dataclass
class ProcessGroup:
    workdir: Path
    startup_timeout: float = 60.0
    processes: list[ManagedProcess] = field(default_factory=list)
    seen_pids: set[int] = field(default_factory=set)
    sessions: set[int] = field(default_factory=set)  # every process is spawned as the leader of a session

    def spawn(self, name: str, args: list[str], *, env: dict[str, str]) -> ManagedProcess:
        log_path = self.workdir / "logs" / f"{name}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        offset = log_path.stat().st_size if log_path.exists() else 0
        with log_path.open("ab") as out:
            out.write(f"$ {' '.join(args)}\n".encode())  # which flags ran (TLS, node auth) is the first thing to check
            out.flush()
            popen = subprocess.Popen(
                args,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                cwd=self.workdir,
                start_new_session=True,
            )
        proc = ManagedProcess(name, popen, log_path, offset)
        self.processes.append(proc)
        self.seen_pids.add(popen.pid)
        self.sessions.add(popen.pid)
        log.info("started %s (pid %d), log %s", name, popen.pid, log_path)
        return proc

    def wait_for_port(self, proc: ManagedProcess, port: int, *, is_open: Callable[[int], bool] | None = None) -> None:
        """Wait until `port` accepts connections (`is_open` probes it where `proc` runs; default: 127.0.0.1)."""
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if proc.popen.poll() is not None:
                raise FederationError(f"{proc.name} exited with code {proc.popen.returncode}:\n{proc.log_tail()}")
            if is_open(port) if is_open is not None else tcp_open("127.0.0.1", port):
                return
            time.sleep(0.2)
        raise FederationError(
            f"{proc.name} did not open port {port} within {self.startup_timeout:.0f} s:\n{proc.log_tail()}"
        )

    def _tree(self, proc: ManagedProcess) -> list[psutil.Process]:
        try:
            root = psutil.Process(proc.popen.pid)
            tree = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []
        self.seen_pids.update(p.pid for p in tree)
        return tree

    def remember_children(self) -> None:
        """Note every child of every process now (a warm executor's forked ClientApps come and go)."""
        for proc in self.processes:
            self._tree(proc)

    def kill(self, proc: ManagedProcess) -> None:
        """SIGKILL a process and its children, as a crash or a power cut would."""
        tree = self._tree(proc)
        for p in tree:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(tree, timeout=10)
        proc.popen.poll()
        self.processes.remove(proc)

    def stop(self, *, grace: float = 10.0, only: list[ManagedProcess] | None = None) -> None:
        """Stop processes (`only` these, or all): SIGTERM to all at once, then SIGKILL whatever outlives `grace`."""
        procs = [p for p in reversed(self.processes) if only is None or p in only]
        trees = {proc.name: self._tree(proc) for proc in procs}
        for tree in trees.values():
            for p in tree:
                try:
                    p.send_signal(signal.SIGTERM)
                except psutil.NoSuchProcess:
                    pass
        _, alive = psutil.wait_procs([p for tree in trees.values() for p in tree], timeout=grace)
        for p in alive:
            log.warning("pid %d ignored SIGTERM, killing it", p.pid)
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(alive, timeout=grace)
        for proc in procs:
            proc.popen.poll()
            self.processes.remove(proc)

    def session_members(self) -> list[psutil.Process]:
        """Every process still running in a session this group started, orphans included.

        `stop` walks the trees of the processes it knows, so a process whose parent was SIGKILLed (a warm
        executor's forked child, reparented) escapes it; its session does not change. A session id can be
        reused once its processes are gone, so a process must also run in this group's folder (every process
        starts there) to count.
        """
        members = []
        for proc in psutil.process_iter():
            try:
                if os.getsid(proc.pid) in self.sessions and Path(proc.cwd()) == self.workdir.resolve():
                    members.append(proc)
            except (OSError, psutil.Error):  # gone meanwhile, or not ours to inspect
                continue
        return members

    def reap_sessions(self, *, grace: float = 10.0) -> list[int]:
        """SIGKILL whatever still runs in a session this group started (`session_members`); the pids killed."""
        members = self.session_members()
        for proc in members:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.kill()
        psutil.wait_procs(members, timeout=grace)
        self.seen_pids.update(p.pid for p in members)
        return sorted(p.pid for p in members)
