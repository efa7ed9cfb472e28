"""A real Flower federation on one machine: a SuperLink and one SuperNode per hospital.

Every part is a separate OS process talking gRPC (Fleet API) and HTTP (control
API) over 127.0.0.1 (or each site on a host of its own: `fedcare.placement`), exactly
as in a deployment. The federation owns every process it starts, their children
included, and stops them all on exit.

Secure by default, through the same code a deployment uses: `workdir` is a
federation directory (made by `fedcare federation init`, or here on first
use), the SuperLink runs with TLS and `--enable-supernode-auth`, and every
hospital's SuperNode starts from its kit (CA certificate, registered node key).
"""

from __future__ import annotations

import logging
import sys
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.tls import TlsFiles
from fedcare.fast_supernode import NODE_REFUSED_EXIT
from fedcare.federation_dir import FederationDir, ensure_local_federation
from fedcare.flwr_cli import CONNECTION, FlwrCli
from fedcare.kits import NODE_CONFIG_FILE, KitOptions
from fedcare.placement import COORDINATOR, Loopback, Placement
from fedcare.processes import (
    FederationError,
    ManagedProcess,
    ProcessGroup,
    console_script,
    flower_env,
    free_port,
)
from fedcare.registration import BudgetTarget, RegistrationReport, budget_target, register_institution, sync
from fedcare.registry import Registry
from fedcare.run_watch import RunWatch
from fedcare.stock_flower import node_config_arg, stock_supernode_command
from fedcare.superexec_secret import keep_superexec_secret
from fedcare.superlink_control import SuperLinkConnection
from fedcare.warm_executor import READY_LINE

__all__ = ["CONNECTION", "FederationError", "LocalFederation", "ManagedProcess", "free_port"]
log = logging.getLogger("fedcare.federation")
RUN_TIMEOUT = 7 * 24 * 3600.0  # a ServerApp runs for the whole run: the executor's per-task limit
# Longer than `fedcare node start`'s own 10 s for its SuperNode and executor: a node killed at the same moment
# as it gives up on them never removes its temp folder (the chaos soak found fedcare-node-* left behind).
STOP_GRACE = 20.0
NODE_PROCESS_PREFIX = "supernode-"  # a hospital's node process is named this and its institution
FAST_SUPERLINK = (sys.executable, "-m", "fedcare.fast_superlink")
SERVERAPP_POLL = "0.1"  # s between ServerApp claims (Flower's SuperExec: 1 s); each costs the SuperLink ~4 ms CPU


@dataclass
class LocalFederation(ProcessGroup):
    """Owns the processes of a federation rooted at `workdir` (a federation directory, made if missing).

    `insecure=True` turns TLS and node authentication off; it exists for debugging only and says so loudly.
    `budget`: the budget service hospitals are registered with when `add_hospital` issues their kits
    (default: the one federation.toml names, if any).
    """

    insecure: bool = False
    activation_timeout: float = 120.0  # a restarted SuperNode waits out its old session (2 missed heartbeats)
    budget: BudgetTarget | None = None
    tls: TlsFiles | None = None
    federation: FederationDir | None = None
    control_port: int = 0
    fleet_port: int = 0
    node_options: list[str] = field(default_factory=list)  # extra `fedcare node start` options for every hospital
    stock_flower: bool = False  # benchmarks' reference only: Flower's own SuperNodes and waits, no warm executor
    serverapp_executor: ManagedProcess | None = None
    placement: Placement = field(default_factory=Loopback)  # where each site's processes run
    _task_log_at_submit: dict[int, int] = field(default_factory=dict, init=False, repr=False)  # run id: log size

    def _spawn(self, name: str, args: list[str], *, site: str = COORDINATOR, prefixed: bool = False) -> ManagedProcess:
        prefix = () if prefixed else self.placement.prefix(site)
        return self.spawn(name, [*prefix, *args], env=flower_env(self.workdir / "homes" / name))

    # ---- federation parts --------------------------------------------------
    def start_superlink(self) -> None:
        """Start the SuperLink; after a crash, again on the same ports and database (fedcare.coordinator_recovery)."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.control_port, self.fleet_port = self.control_port or free_port(), self.fleet_port or free_port()
        # fedcare's own SuperLink holds empty polls (fedcare.fast_superlink); the reference runs Flower's as it ships.
        superlink = [console_script("flower-superlink")] if self.stock_flower else [*FAST_SUPERLINK, "--"]
        args = [
            *superlink,
            "--disable-runtime-dependency-installation",  # hospitals' sites have no internet
            *("--host", "127.0.0.1", "--port", str(self.control_port)),
            *("--fleet-api-address", f"{self.placement.fleet_bind}:{self.fleet_port}"),
            *("--database", str(self.workdir / "superlink.db")),
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
                *("--ssl-ca-certfile", str(self.tls.ca_certificate)),
                *("--ssl-certfile", str(self.tls.server_certificate), "--ssl-keyfile", str(self.tls.server_key)),
                "--enable-supernode-auth",  # only node keys registered with `flwr supernode register` get in
            ]
            if self.budget is None:
                self.budget = budget_target(fed)
        if not self.stock_flower:  # each run's ServerApp comes from the warm executor, which signs its claims
            keep_superexec_secret(self.superexec_secret)  # the same after a restart: the executor outlives it
            args += ["--isolation", "process", "--superexec-auth-secret-file", str(self.superexec_secret)]
        proc = self._spawn("superlink", args)
        place = self.placement
        self.wait_for_port(proc, self.fleet_port, is_open=lambda p: place.port_open(COORDINATOR, place.fleet_bind, p))
        self.wait_for_port(proc, self.control_port, is_open=lambda p: place.port_open(COORDINATOR, "127.0.0.1", p))
        executor = self.serverapp_executor
        if executor is not None and executor.popen.poll() is not None:  # it died with the SuperLink
            self.processes.remove(executor)
            executor = self.serverapp_executor = None
        if not self.stock_flower and executor is None:
            self._start_serverapp_executor()
        self.cli.write_config(
            f"127.0.0.1:{self.control_port}", ca_certificate=None if self.tls is None else self.tls.ca_certificate
        )
        if self.federation is not None:
            for report in self.sync():
                log.info("%s: %s", report.name, "; ".join(report.done + report.problems))

    def _start_serverapp_executor(self) -> None:
        """The coordinator's warm executor: it claims each run's ServerApp from the SuperLink's runtime API and
        runs Flower's `flwr-serverapp` in a child forked from a process that has imported torch and flwr
        already (Flower's own SuperExec starts a fresh process per run, after polling every second)."""
        args = [sys.executable, "-m", "fedcare.warm_executor", "--serverapp"]
        args += ["--runtime-address", f"127.0.0.1:{self.control_port}", "--message-timeout", str(RUN_TIMEOUT)]
        args += ["--poll", SERVERAPP_POLL, "--superexec-auth-secret-file", str(self.superexec_secret)]
        if self.tls is not None:
            args += ["--root-certificates", str(self.tls.ca_certificate)]
        self.serverapp_executor = self._spawn("serverapp-executor", args)  # warms up while hospitals join

    def _wait_for_serverapp_executor(self) -> None:
        proc, deadline = self.serverapp_executor, time.monotonic() + self.activation_timeout
        while proc is not None and READY_LINE not in proc.log_text():
            if proc.popen.poll() is not None or time.monotonic() > deadline:
                raise FederationError(f"the ServerApp executor did not get ready:\n{proc.log_tail()}")
            time.sleep(0.2)

    @property
    def superexec_secret(self) -> Path:
        return self.workdir / "superlink" / "superexec-secret"

    @property
    def connection(self) -> SuperLinkConnection:
        """The coordinator's connection to this SuperLink's control API (for registrations)."""
        if self.federation is None or not self.control_port:
            raise FederationError("start the SuperLink (with TLS) first")
        return SuperLinkConnection(
            f"127.0.0.1:{self.control_port}", self.federation.ca_certificate, self.placement.prefix(COORDINATOR)
        )

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
        """Start a hospital's node (`fedcare node start`: SuperNode and warm executor) from its kit, issued
        and registered now when `kit` is None.

        An explicit `kit` folder is used as a hospital would use it: nothing is registered for it.
        `wait=False` returns without waiting for the node (for nodes expected to be refused, or to start
        several at once and then `wait_for_node` each).
        """
        if not self.fleet_port:
            raise FederationError("start the SuperLink before adding hospitals")
        config = {"institution": institution, **(node_config or {})}
        if self.insecure:
            kit = None
        elif kit is None:
            kit = self.ensure_kit(institution, epsilon_limit=float(config.get("epsilon-limit", 10.0)))
        port = free_port()
        if self.stock_flower:
            stock_config = {**config, "data-path": str(Path(data_path).resolve())}
            fleet_address = self.placement.fleet_address(institution, self.fleet_port)
            args = stock_supernode_command(fleet_address, port, stock_config, kit)
        else:
            args = [
                *(sys.executable, "-m", "fedcare.cli", "node", "start"),
                *("--superlink", self.placement.fleet_address(institution, self.fleet_port)),
                *("--runtime-port", str(port)),
                *("--data", str(Path(data_path).resolve())),
                *("--node-config", node_config_arg(config)),
                *self.node_options,
                *(["--insecure"] if kit is None else ["--kit", str(kit)]),
            ]
        proc = self._spawn(f"{NODE_PROCESS_PREFIX}{institution}", args, site=institution)
        return self.wait_for_node(proc) if wait else proc

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

    def wait_for_nodes(self, procs: list[ManagedProcess]) -> list[ManagedProcess]:
        """Wait for nodes started together (`add_hospital(wait=False)`): their executors warm up side by side,
        which on a machine of few cores costs one warm-up's wall time instead of one per node."""
        return [self.wait_for_node(proc) for proc in procs]

    def wait_for_node(self, proc: ManagedProcess) -> ManagedProcess:
        """Wait until the SuperLink has accepted the SuperNode and the warm executor is ready, restarting
        the node while it is refused (2004) because the SuperLink still counts its key's previous session
        as online.

        That happens when a hospital's SuperNode crashed and restarts at once: the SuperLink notices the
        old session is gone only after two missed heartbeats (20 s with fedcare's node, 60 s with Flower's
        own), and Flower 1.39's SuperNode exits instead of retrying. fedcare's node retries for
        `SuperNodeWaits.refusal_patience` itself; for Flower's own (`stock_flower`) this does, for up to
        `activation_timeout` seconds. A node refused for good (`NODE_REFUSED_EXIT`) is not restarted.
        """
        deadline = time.monotonic() + self.activation_timeout
        while True:
            text = proc.log_text()
            if "SuperNode ID:" in text and (READY_LINE in text or self.stock_flower):
                self.remember_children()
                return proc
            if proc.popen.poll() == NODE_REFUSED_EXIT:
                raise FederationError(f"{proc.name}: the SuperLink refuses its key (revoked?):\n{proc.log_tail()}")
            if proc.popen.poll() is not None:
                if "2004" in text and time.monotonic() < deadline:
                    log.warning(
                        "%s refused (2004): the SuperLink still holds this key's previous session; retrying in 5 s",
                        proc.name,
                    )
                    self.processes.remove(proc)
                    time.sleep(5.0)
                    proc = self._spawn(proc.name, list(proc.popen.args), prefixed=True)  # type: ignore[arg-type]
                    continue
                raise FederationError(f"{proc.name} exited with code {proc.popen.returncode}:\n{proc.log_tail()}")
            if time.monotonic() > deadline:
                raise FederationError(
                    f"{proc.name} was not accepted by the SuperLink (or its executor not ready) within "
                    f"{self.activation_timeout:.0f} s:\n{proc.log_tail()}"
                )
            time.sleep(0.2)

    # ---- runs (the coordinator's flwr CLI) -------------------------------------
    @property
    def cli(self) -> FlwrCli:
        return FlwrCli(self.workdir, self.placement.prefix(COORDINATOR))

    def flwr(self, *args: str, timeout: float = 120.0) -> dict[str, Any]:
        return self.cli.run(*args, timeout=timeout)

    def submit(self, *, app_dir: Path, run_config: dict[str, Any]) -> int:
        self._wait_for_serverapp_executor()  # a run submitted earlier waits for it anyway, untimed
        since = self._task_log_size()
        run_id = self.cli.submit(app_dir=app_dir, run_config=run_config)
        self._task_log_at_submit[run_id] = since
        return run_id

    def _task_log_size(self) -> int:
        try:
            return self.serverapp_executor.log_path.stat().st_size if self.serverapp_executor else 0
        except OSError:
            return 0

    def run_info(self, run_id: int) -> dict[str, Any]:
        return self.cli.run_info(run_id)

    def run_status(self, run_id: int) -> str:
        """Flower's status string, e.g. `running` or `finished:completed`."""
        return str(self.run_info(run_id)["status"])

    def watch(self, run_id: int, *, fallback: float = 10.0) -> RunWatch:
        """A cheap way to follow a run: Flower is asked when the ServerApp executor logs a run's end."""
        task_log = None if self.serverapp_executor is None else self.serverapp_executor.log_path
        since = self._task_log_at_submit.get(run_id)
        return RunWatch(ask=lambda: self.run_info(run_id), task_log=task_log, fallback=fallback, since=since)

    def wait_finished(self, run_id: int, *, timeout: float, poll: float = 0.25) -> str:
        """The run's final status (`finished:...`) once Flower reports it; TimeoutError after `timeout` seconds.
        `poll`: between reads of the ServerApp executor's log (fedcare/run_watch.py says why not `flwr ls`)."""
        deadline = time.monotonic() + timeout
        watch = self.watch(run_id)
        while time.monotonic() < deadline:
            if watch.check().get("status", "").startswith("finished"):
                return watch.status
            time.sleep(poll)
        raise TimeoutError(f"run {run_id} still {watch.status!r} after {timeout:.0f} s")

    def stop_run(self, run_id: int) -> None:
        self.cli.stop_run(run_id)

    def __enter__(self) -> LocalFederation:
        return self

    def __exit__(self, *exc: object) -> None:
        # Hospitals, then the ServerApp executor, then the SuperLink: a SuperNode leaving tells the SuperLink so,
        # and the executor's runtime-API call ends only when answered; each waited out retries (about 2 s) when
        # the SuperLink went down at the same moment.
        self.stop(grace=STOP_GRACE, only=[p for p in self.processes if p.name.startswith(NODE_PROCESS_PREFIX)])
        self.stop(grace=STOP_GRACE, only=[p for p in (self.serverapp_executor,) if p in self.processes])
        self.stop(grace=STOP_GRACE)
