"""The hospital's warm ClientApp executor: Flower's `run_clientapp` in a child forked from a warm parent.

Flower 1.39 starts a fresh `flwr-clientapp` process per message, which imports flwr, torch and pandas
(2-3 s) and builds its first optimizer (0.9 s, loading `torch._dynamo`) before doing 50 ms of work. This
process pays that once: it imports the third-party libraries, warms them up, then claims ClientApp tasks
from its SuperNode's runtime API (the SuperNode runs with `--isolation process`, so it starts no
executor of its own) and forks one child per task. The child runs Flower's own `run_clientapp`, so it
unpacks and loads the run's app exactly as Flower would.

Invariants, and why:

* Only third-party modules are imported here, never `client`, `common` or `server`: Flower's `load_app`
  reuses `sys.modules`, so a pre-imported copy would shadow the app the run ships.
* The parent runs torch with one thread. A fork taken after torch's OpenMP pool started deadlocks the
  child's first parallel kernel (tests/fedcare/test_warm_executor.py shows both sides); the child
  then sets its own thread count (`--torch-threads`, 1 by default: three hospitals' ClientApps on two
  cores took 10.2 s with torch's two threads each, spinning in OpenMP, and 2.1 s with one).
* Each child reseeds `random`, numpy and torch from `os.urandom`: children of one parent would otherwise
  share its random state. (fedcare's DP noise and Poisson sampling already use their own generators
  seeded from OS entropy per round, client/dp_training.py; this covers everything else.)
* A child that crashes, hangs past `message_timeout` (then it is SIGKILLed) or dies unanswered takes
  only itself down: the parent answers its message with an error reply naming the reason, logs it, and
  serves the next task.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import select
import shutil
import signal
import socket
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer

from fedcare.child_report import _INPUT, _REPLIED, ChildReport, _write_frame
from fedcare.flower_internals import RuntimeApi, answer_failed_task, run_task
from fedcare.node_sockets import task_temp_dir
from fedcare.warm_state import freeze_for_fork, prepare_child, warm_up

log = logging.getLogger("fedcare.executor")
READY_LINE = "fedcare warm executor ready"  # fedcare.node and LocalFederation wait for this line
# One of these ends every task's lines in the log: fedcare.run_watch asks Flower about a run when it sees one.
TASK_ENDED_MARKS = ("task served in", "without replying")


@dataclass
class WarmExecutor:
    api: RuntimeApi
    poll: float = 0.02
    message_timeout: float = 300.0
    threads: int = 1
    stopping: bool = False
    served: int = 0
    failed: int = 0
    child: int = 0  # the pid of the running child, 0 when idle
    wakeup: socket.socket | None = None  # told by the SuperNode when a task waits (`poll` is then a fallback)
    health: socket.socket | None = None  # a listening TCP socket: connections are accepted and closed

    def serve_forever(self) -> None:
        client = self.api.client()
        kind = "ServerApp" if self.api.serverapp else "ClientApp"
        log.warning("%s (pid %d, %s tasks from %s)", READY_LINE, os.getpid(), kind, self.api.address)
        while not self.stopping:
            try:
                token = self.api.acquire_task(client)
            except Exception as exc:  # the SuperNode restarting: keep waiting for it
                log.info("runtime API %s not answering (%s); retrying", self.api.address, exc)
                time.sleep(1.0)
                continue
            if token is None:
                self._wait_for_work()
                continue
            self.run_task(token)

    def _wait_for_work(self) -> None:
        """Wait `poll` seconds, less when the SuperNode says a task waits; answer health probes meanwhile."""
        watched = [sock for sock in (self.wakeup, self.health) if sock is not None]
        if not watched:
            time.sleep(self.poll)
            return
        for sock in select.select(watched, [], [], self.poll)[0]:
            if sock is self.health:  # a probe only needs the connection made (deploy/healthcheck.py tcp)
                with contextlib.suppress(OSError):
                    sock.accept()[0].close()
                continue
            with contextlib.suppress(BlockingIOError):
                while sock.recv(64, socket.MSG_DONTWAIT):
                    pass

    def run_task(self, token: str) -> ChildReport:
        """Fork a child for one claimed task and see it through; the parent answers if the child cannot."""
        read_fd, write_fd = os.pipe()
        started = time.monotonic()
        scratch = task_temp_dir()
        freeze_for_fork()  # what the warm-up or the last message left, out of the children's GC
        pid = os.fork()
        if pid == 0:  # the child: never returns
            os.close(read_fd)
            os.environ["TMPDIR"] = tempfile.tempdir = scratch
            self._child(token, write_fd)
        os.close(write_fd)
        report, self.child = ChildReport(), pid
        try:
            outcome = self._supervise(pid, read_fd, report)
        finally:
            self.child = 0
            shutil.rmtree(scratch, ignore_errors=True)  # what a killed child could not remove
        self.served += 1
        # A ServerApp has no reply to push; Flower's own exit handler reports how it ended, unless it was killed.
        if report.replied or (self.api.serverapp and outcome.startswith("exited")):
            cpu = report.cpu_seconds
            log.info("%s %.2f s (%.2f CPU-s; %s)", TASK_ENDED_MARKS[0], time.monotonic() - started, cpu, outcome)
            return report
        self.failed += 1
        app = "ServerApp" if self.api.serverapp else "ClientApp"
        reason = f"fedcare executor: the {app} {outcome} {TASK_ENDED_MARKS[1]}"
        where = "" if report.served is None else f" (run {report.served.run_id})"
        try:
            answered = answer_failed_task(self.api, token, report.served, reason=reason)
        except Exception:
            log.exception("%s%s; could not answer for it", reason, where)
            return report
        if answered:
            log.error("%s%s; answered with the reason", reason, where)
        else:
            log.error("%s, before its task started; Flower offers the task again when its claim expires", reason)
        return report

    def _supervise(self, pid: int, read_fd: int, report: ChildReport) -> str:
        deadline = time.monotonic() + self.message_timeout
        open_fd = True
        try:
            while open_fd:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    os.kill(pid, signal.SIGKILL)
                    os.waitpid(pid, 0)
                    return f"did not finish within {self.message_timeout:g} s and was killed"
                ready, _, _ = select.select([read_fd], [], [], min(remaining, 1.0))
                if ready:
                    data = os.read(read_fd, 65536)
                    if data:
                        report.feed(data)
                    else:
                        open_fd = False
        finally:
            os.close(read_fd)
        # EOF: the child exited (or closed the pipe while dying); reap it, within the same deadline
        while True:
            done, status, usage = os.wait4(pid, os.WNOHANG)
            if done:
                report.cpu_seconds = usage.ru_utime + usage.ru_stime
                break
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                _, status = os.waitpid(pid, 0)
                return f"did not exit within {self.message_timeout:g} s and was killed"
            time.sleep(0.005)
        if os.WIFSIGNALED(status):
            return f"was killed by {signal.Signals(os.WTERMSIG(status)).name}"
        return f"exited with code {os.WEXITSTATUS(status)}"

    def _child(self, token: str, write_fd: int) -> None:
        code = 70
        try:
            for sock in (self.wakeup, self.health):
                if sock is not None:
                    sock.close()
            prepare_child(threads=self.threads)
            code = run_task(
                self.api,
                token,
                parent_pid=os.getppid(),
                on_input=lambda served: _write_frame(write_fd, _INPUT, pickle.dumps(served)),
                on_replied=lambda: _write_frame(write_fd, _REPLIED),
            )
        except BaseException:
            log.exception("the ClientApp child failed")
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)

    def stop(self, *_: object) -> None:
        """On SIGTERM/SIGINT: end the running ClientApp (Flower's handler reports it stopped) and exit.

        Exiting from the handler also ends a runtime-API call that is retrying while the SuperNode is gone. A
        second signal (the node's supervisor and a process group both send one) is ignored: raised again, it
        would land in the interpreter's exit handlers (torch's) and print a traceback there.
        """
        if self.stopping:
            return
        self.stopping = True
        if self.child:
            os.kill(self.child, signal.SIGTERM)
        raise SystemExit(0)


def read_superexec_secret(path: Path) -> bytes:
    """The secret's exact bytes, as Flower's SuperExec reads them; refused when unreadable or empty."""
    try:
        secret = path.read_bytes()
    except OSError as exc:
        raise typer.BadParameter(f"cannot read the SuperExec auth secret {path}: {exc}") from exc
    if not secret:
        raise typer.BadParameter(f"the SuperExec auth secret {path} is empty")
    return secret


def main(
    runtime_address: Annotated[str, typer.Option(help="The runtime API to claim tasks from (host:port).")] = (
        "127.0.0.1:9094"
    ),
    serverapp: Annotated[
        bool,
        typer.Option("--serverapp", help="Serve a SuperLink's ServerApps, not ClientApps."),
    ] = False,
    parquet: Annotated[
        bool,
        typer.Option(
            "--parquet",
            help="The node's table is Parquet: keep pyarrow loaded (30 MB) so that no message imports it "
            "(fedcare.warm_state says why it is otherwise left out).",
        ),
    ] = False,
    root_certificates: Annotated[
        str | None, typer.Option(help="CA certificate of a runtime API served over TLS (the SuperLink's).")
    ] = None,
    poll: Annotated[
        float,
        typer.Option(min=0.001, help="Seconds between task claims while idle (with --notify-socket: a fallback)."),
    ] = 0.02,
    torch_threads: Annotated[
        int,
        typer.Option(
            min=0,
            help="torch threads per ClientApp (0: torch's default). One: OpenMP threads spin while they wait, so "
            "nodes and messages sharing cores ran 5x slower with two (docs/benchmarks.md).",
        ),
    ] = 1,
    notify_socket: Annotated[
        str | None, typer.Option(help="A UNIX datagram socket to bind: the SuperNode says there when a task waits.")
    ] = None,
    message_timeout: Annotated[
        float, typer.Option(min=0.1, help="Seconds a message may take before its ClientApp is killed.")
    ] = 300.0,
    superexec_auth_secret_file: Annotated[
        Path | None,
        typer.Option(help="The runtime API's SuperExec auth secret (as Flower's `flower-superexec` takes it)."),
    ] = None,
    health_address: Annotated[
        str | None,
        typer.Option(
            help="host:port to listen on for TCP health checks: from the start, as Flower's SuperExec health server "
            "(probes connect while it warms up; it claims tasks once warm, and a run submitted meanwhile waits)."
        ),
    ] = None,
) -> None:
    """Serve a SuperNode's ClientApp tasks (or a SuperLink's ServerApps) from a warm process."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    for noisy in ("httpx", "alembic"):  # a line per task claim; Flower's SuperLink imports alembic
        logging.getLogger(noisy).setLevel(logging.WARNING)
    secret = None if superexec_auth_secret_file is None else read_superexec_secret(superexec_auth_secret_file)
    health = None
    if health_address is not None:  # before the warm-up, which took minutes in a loaded compose stack
        host, _, port = health_address.rpartition(":")
        health = socket.create_server((host or "0.0.0.0", int(port)))
    started = time.monotonic()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Opacus' notes on a toy model say nothing about real training
        threads = warm_up(serverapp=serverapp, pyarrow=parquet)
    log.info("warmed up in %.1f s", time.monotonic() - started)
    api = RuntimeApi(runtime_address, serverapp=serverapp, ca_certificate=root_certificates, superexec_secret=secret)
    threads = torch_threads or threads
    executor = WarmExecutor(api, poll=poll, message_timeout=message_timeout, threads=threads, health=health)
    if notify_socket is not None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(notify_socket)
        executor.wakeup = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        executor.wakeup.bind(notify_socket)
    signal.signal(signal.SIGTERM, executor.stop)
    signal.signal(signal.SIGINT, executor.stop)
    try:
        executor.serve_forever()
    except SystemExit:
        pass
    log.info("stopped after %d messages (%d failed)", executor.served, executor.failed)
    # Without the interpreter's teardown of torch, flwr and SQLAlchemy: 2.9 s against 0.1 s here, paid by every
    # node and federation that stops. Nothing of the parent's needs it: each child saved its own state.
    logging.shutdown()
    os._exit(0)


if __name__ == "__main__":
    typer.run(main)
