"""A real Flower federation on one machine: a SuperLink and one SuperNode per hospital.

Every part is a separate OS process talking gRPC (Fleet API) and HTTP (control
API) over 127.0.0.1, exactly as in a deployment. The federation owns every
process it starts, their children included, and stops them all on exit.

Secure by default, through the same code a deployment uses: `workdir` is a
federation directory (made by `fedcare federation init`, or here on first
use), the SuperLink runs with TLS and `--enable-supernode-auth`, and every
hospital's SuperNode starts from its kit (CA certificate, registered node key).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import tomli_w

from common.tls import TlsFiles
from fedcare.federation_dir import FederationDir, ensure_local_federation
from fedcare.kits import CA_FILE, NODE_CONFIG_FILE, KitOptions
from fedcare.node_keys import PRIVATE_KEY_FILE
from fedcare.registration import BudgetTarget, RegistrationReport, budget_target, register_institution, sync
from fedcare.registry import Registry
from fedcare.superlink_control import SuperLinkConnection

log = logging.getLogger("fedcare.federation")
CONNECTION = "fedcare"


class FederationError(RuntimeError):
    """A federation process failed to start or a run could not be submitted."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _bin(name: str) -> str:
    """The console script next to this interpreter, so a venv works without activation."""
    candidate = Path(sys.executable).with_name(name)
    return str(candidate) if candidate.exists() else name


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


@dataclass
class LocalFederation:
    """Owns the processes of a federation rooted at `workdir` (a federation directory, made if missing).

    `insecure=True` turns TLS and node authentication off; it exists for debugging only and says so loudly.
    `budget`: the budget service hospitals are registered with when `add_hospital` issues their kits
    (default: the one federation.toml names, if any).
    """

    workdir: Path
    insecure: bool = False
    startup_timeout: float = 60.0
    activation_timeout: float = 120.0  # a restarted SuperNode waits out its old session (2 missed 30 s heartbeats)
    processes: list[ManagedProcess] = field(default_factory=list)
    seen_pids: set[int] = field(default_factory=set)
    budget: BudgetTarget | None = None
    tls: TlsFiles | None = None
    federation: FederationDir | None = None
    control_port: int = 0
    fleet_port: int = 0

    # ---- process plumbing -------------------------------------------------
    def _env(self, home: Path) -> dict[str, str]:
        home.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        env.update(
            FLWR_HOME=str(home),
            FLWR_TELEMETRY_ENABLED="0",  # hospital deployments must not phone home
            FLWR_DISABLE_UPDATE_CHECK="1",
            PYTHONUNBUFFERED="1",
            # Flower starts helpers (flower-superexec, flwr-clientapp) by name: find this venv's first,
            # also when the venv was never activated (CI, `make`).
            PATH=os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")]),
        )
        return env

    def _spawn(self, name: str, args: list[str]) -> ManagedProcess:
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
                env=self._env(self.workdir / "homes" / name),
                cwd=self.workdir,
                start_new_session=True,  # Ctrl-C in the terminal reaches us, and we stop them in order
            )
        proc = ManagedProcess(name, popen, log_path, offset)
        self.processes.append(proc)
        self.seen_pids.add(popen.pid)
        log.info("started %s (pid %d), log %s", name, popen.pid, log_path)
        return proc

    def _wait_for_port(self, proc: ManagedProcess, port: int) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if proc.popen.poll() is not None:
                raise FederationError(f"{proc.name} exited with code {proc.popen.returncode}:\n{proc.log_tail()}")
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                if sock.connect_ex(("127.0.0.1", port)) == 0:
                    return
            time.sleep(0.2)
        raise FederationError(
            f"{proc.name} did not open port {port} within {self.startup_timeout:.0f} s:\n{proc.log_tail()}"
        )

    # ---- federation parts --------------------------------------------------
    def start_superlink(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.control_port, self.fleet_port = free_port(), free_port()
        args = [
            _bin("flower-superlink"),
            "--disable-runtime-dependency-installation",  # hospitals' sites have no internet
            "--host",
            "127.0.0.1",
            "--port",
            str(self.control_port),
            "--fleet-api-address",
            f"127.0.0.1:{self.fleet_port}",
            "--database",
            str(self.workdir / "superlink.db"),
        ]
        if self.insecure:
            log.warning(
                "INSECURE MODE: TLS and node authentication are off; updates cross the network unencrypted "
                "and any process may join as a hospital. Use only for debugging."
            )
            args.append("--insecure")
        else:
            fed = self.federation = ensure_local_federation(self.workdir)
            self.tls = TlsFiles(fed.ca_certificate, fed.server_certificate, fed.server_key)
            args += [
                "--ssl-ca-certfile",
                str(self.tls.ca_certificate),
                "--ssl-certfile",
                str(self.tls.server_certificate),
                "--ssl-keyfile",
                str(self.tls.server_key),
                "--enable-supernode-auth",  # only node keys registered with `flwr supernode register` get in
            ]
            if self.budget is None:
                self.budget = budget_target(fed)
        proc = self._spawn("superlink", args)
        self._wait_for_port(proc, self.fleet_port)
        self._wait_for_port(proc, self.control_port)
        self._write_cli_config()
        if self.federation is not None:
            for report in self.sync():
                log.info("%s: %s", report.name, "; ".join(report.done + report.problems))

    @property
    def connection(self) -> SuperLinkConnection:
        """The coordinator's connection to this SuperLink's control API (for registrations)."""
        if self.federation is None or not self.control_port:
            raise FederationError("start the SuperLink (with TLS) first")
        return SuperLinkConnection(f"127.0.0.1:{self.control_port}", self.federation.ca_certificate)

    def sync(self) -> list[RegistrationReport]:
        """Finish the registrations and revocations that were pending while the SuperLink was down."""
        return sync(self.federation, superlink=self.connection, budget=self.budget)  # type: ignore[arg-type]

    def ensure_kit(self, institution: str, *, epsilon_limit: float = 10.0, delta: float = 1e-5) -> Path:
        """The institution's kit, issued and registered now if it has none (the demo's and tests' hospitals)."""
        fed = self.federation
        if fed is None:
            raise FederationError("kits need the SuperLink started with TLS")
        record = Registry(fed.registry_path).snapshot().get(fed.kit_dir(institution).name)
        if record is None:
            report = register_institution(
                fed, KitOptions(institution, epsilon_limit, delta), superlink=self.connection, budget=self.budget
            )
        elif record.pending and record.active:
            reports = sync(fed, superlink=self.connection, budget=self.budget, only={record.slug})
            report = reports[0] if reports else None
        else:
            report = None
        if report is not None and report.record.superlink != "registered":
            raise FederationError(f"{institution}: node key not registered: {'; '.join(report.problems)}")
        return fed.kit_dir(institution)

    def add_hospital(
        self,
        *,
        institution: str,
        data_path: Path,
        node_config: dict[str, Any] | None = None,
        kit: Path | None = None,
        wait: bool = True,
    ) -> ManagedProcess:
        """Start a hospital's SuperNode from its kit (issued and registered now when `kit` is None).

        An explicit `kit` folder is used as a hospital would use it: nothing is registered for it.
        `wait=False` returns without waiting for the SuperNode's port (for nodes expected to be refused).
        """
        if not self.fleet_port:
            raise FederationError("start the SuperLink before adding hospitals")
        config = {"institution": institution, "data-path": str(Path(data_path).resolve()), **(node_config or {})}
        port = free_port()
        args = [
            _bin("flower-supernode"),
            "--superlink",
            f"127.0.0.1:{self.fleet_port}",
            "--port",
            str(port),
            "--node-config",
            " ".join(f"{k}={json.dumps(v)}" for k, v in config.items()),
        ]
        if self.insecure:
            args.append("--insecure")
        else:
            if kit is None:
                kit = self.ensure_kit(institution, epsilon_limit=float(config.get("epsilon-limit", 10.0)))
            args += [
                "--root-certificates",
                str(kit / CA_FILE),
                "--auth-supernode-private-key",
                str(kit / PRIVATE_KEY_FILE),
            ]
        proc = self._spawn(f"supernode-{institution}", args)
        if wait:
            self._wait_for_port(proc, port)
            proc = self._wait_for_activation(proc, args=args)
        return proc

    def add_site(self, site: Path, *, node_config: dict[str, Any] | None = None, wait: bool = True) -> ManagedProcess:
        """Start a hospital's SuperNode from its installed site directory (`fedcare institution install`),
        with the site's own node-config.toml (`node_config` overrides single entries)."""
        config = {**tomllib.loads((Path(site) / NODE_CONFIG_FILE).read_text()), **(node_config or {})}
        return self.add_hospital(
            institution=str(config.pop("institution")),
            data_path=Path(config.pop("data-path")),
            node_config=config,
            kit=Path(site),
            wait=wait,
        )

    def _wait_for_activation(self, proc: ManagedProcess, *, args: list[str]) -> ManagedProcess:
        """Wait until the SuperLink has accepted the SuperNode, restarting it while it is refused (2004)
        because the SuperLink still counts its key's previous session as online.

        That happens when a hospital's SuperNode crashed and restarts at once: the SuperLink notices the
        old session is gone only after two missed heartbeats (about 60 s), and Flower 1.39's SuperNode
        exits instead of retrying. A hospital's supervisor (compose's restart policy, systemd) retries;
        this does the same, for up to `activation_timeout` seconds.
        """
        deadline = time.monotonic() + self.activation_timeout
        while True:
            with proc.log_path.open("rb") as handle:
                handle.seek(proc.log_offset)
                text = handle.read().decode(errors="replace")
            if "SuperNode ID:" in text:
                return proc
            if proc.popen.poll() is not None:
                if "2004" in text and time.monotonic() < deadline:
                    log.warning(
                        "%s refused (2004): the SuperLink still holds this key's previous session; retrying in 5 s",
                        proc.name,
                    )
                    self.processes.remove(proc)
                    time.sleep(5.0)
                    proc = self._spawn(proc.name, args)
                    continue
                raise FederationError(f"{proc.name} exited with code {proc.popen.returncode}:\n{proc.log_tail()}")
            if time.monotonic() > deadline:
                raise FederationError(
                    f"{proc.name} was not accepted by the SuperLink within "
                    f"{self.activation_timeout:.0f} s:\n{proc.log_tail()}"
                )
            time.sleep(0.2)

    def _write_cli_config(self) -> None:
        connection: dict[str, Any] = {"address": f"127.0.0.1:{self.control_port}"}
        if self.insecure:
            connection["insecure"] = True
        else:
            connection["root-certificates"] = str(self.tls.ca_certificate)  # type: ignore[union-attr]
        home = self.workdir / "homes" / "cli"
        home.mkdir(parents=True, exist_ok=True)
        (home / "config.toml").write_text(tomli_w.dumps({"superlink": {"default": CONNECTION, CONNECTION: connection}}))

    def flwr(self, *args: str, timeout: float = 120.0) -> dict[str, Any]:
        """Run a `flwr` CLI command against this federation and parse its JSON answer."""
        cmd = [_bin("flwr"), *args, "--format", "json"]
        done = subprocess.run(
            cmd,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=self._env(self.workdir / "homes" / "cli"),
            cwd=self.workdir,
        )
        try:
            answer = json.loads(done.stdout[done.stdout.index("{") :])
        except ValueError as exc:
            raise FederationError(
                f"`flwr {' '.join(args)}` gave no JSON (exit {done.returncode}): {done.stdout}{done.stderr}"
            ) from exc
        if not answer.get("success", False):
            raise FederationError(f"`flwr {' '.join(args)}` failed: {answer.get('error-message', answer)}")
        return answer

    def submit(self, *, app_dir: Path, run_config: dict[str, Any]) -> int:
        config_path = self.workdir / f"run-config-{time.time_ns()}.toml"
        config_path.write_text(tomli_w.dumps(run_config))
        answer = self.flwr("run", str(app_dir), CONNECTION, "--run-config", str(config_path))
        return int(answer["run-id"])

    def run_info(self, run_id: int) -> dict[str, Any]:
        """Flower's row for the run (`flwr ls`): status, elapsed seconds, timestamps, traffic."""
        runs = self.flwr("ls", CONNECTION, "--run-id", str(run_id))["runs"]
        return dict(runs[0]) if runs else {"status": "unknown"}

    def run_status(self, run_id: int) -> str:
        """Flower's status string, e.g. `running` or `finished:completed`."""
        return str(self.run_info(run_id)["status"])

    def stop_run(self, run_id: int) -> None:
        try:
            self.flwr("stop", str(run_id), CONNECTION, timeout=30)
        except (FederationError, subprocess.TimeoutExpired) as exc:
            log.warning("could not stop run %d cleanly: %s", run_id, exc)

    # ---- shutdown -------------------------------------------------------------
    def _tree(self, proc: ManagedProcess) -> list[psutil.Process]:
        try:
            root = psutil.Process(proc.popen.pid)
            return [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def kill(self, proc: ManagedProcess) -> None:
        """SIGKILL a process and its children, as a crash or a power cut would."""
        tree = self._tree(proc)
        self.seen_pids.update(p.pid for p in tree)
        for p in tree:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(tree, timeout=10)
        proc.popen.poll()
        self.processes.remove(proc)

    def stop(self, *, grace: float = 10.0) -> None:
        """Stop hospitals first, then the SuperLink; SIGKILL whatever ignores SIGTERM."""
        for proc in reversed(self.processes):
            tree = self._tree(proc)
            self.seen_pids.update(p.pid for p in tree)
            for p in tree:
                try:
                    p.send_signal(signal.SIGTERM)
                except psutil.NoSuchProcess:
                    pass
            _, alive = psutil.wait_procs(tree, timeout=grace)
            for p in alive:
                log.warning("%s: pid %d ignored SIGTERM, killing it", proc.name, p.pid)
                try:
                    p.kill()
                except psutil.NoSuchProcess:
                    pass
            psutil.wait_procs(alive, timeout=grace)
            proc.popen.poll()
        self.processes.clear()

    def __enter__(self) -> LocalFederation:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
