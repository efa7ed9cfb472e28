"""A federation of hospital-made keys, started from site directories: on loopback or across namespaces.

The same steps as a deployment (and `fedcare.demo_sites`): each hospital joins with its own keys, the
coordinator registers the requests while its SuperLink is down (pending), one hospital makes the CKKS
key set and the coordinator relays sealed copies; then the SuperLink starts (TLS, node authentication,
completing the registrations) and each hospital runs `fedcare node start --kit SITE --data FILE`.
With a `netns.Topology` every site runs in its namespace and the hospitals dial the relay; without
one, everything shares 127.0.0.1 (the reference the bench compares against).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.private_files import write_private
from fedcare.demo_sites import hospital_key_ceremony, join_and_register
from fedcare.federation import LocalFederation
from fedcare.federation_dir import FederationDir, init_federation
from fedcare.placement import COORDINATOR, Loopback
from fedcare.registration import BudgetTarget
from fedcare.site import SiteDir
from fedcare.superlink_control import SuperLinkConnection
from server.budget.process import free_port, running_budget_service
from server.budget_client.admin import BudgetAdmin
from tests.support import netns

NOT_RUNNING = "127.0.0.1:9"  # registrations stay pending until the SuperLink starts (and syncs them)
APP_DIR = Path(__file__).resolve().parents[2]


@dataclass
class MultiSite:
    fed: LocalFederation
    federation: FederationDir
    sites: dict[str, SiteDir]
    topology: netns.Topology | None
    budget_run_config: dict[str, str] = field(default_factory=dict)  # a run's ServerApp reports to the ledger

    @property
    def runs(self) -> Path:
        return self.federation.root / "runs"

    def results(self, run_id: int) -> dict[str, Any]:
        return json.loads((self.runs / str(run_id) / "results.json").read_text())

    def round_times(
        self,
        run_id: int,
        *,
        timeout: float,
        sample: Callable[[], None] | None = None,
        on_round: Callable[[int], object] | None = None,
    ) -> tuple[str, list[float]]:
        """Wait for the run to finish; Flower's final status and when each round landed in results.json
        (monotonic s). A thread reads the file every 0.2 s (Flower's status, through the `flwr` CLI, can take
        seconds under load), calls `on_round(n)` when round n lands and `sample()` about once a second."""
        path, landed, stop = self.runs / str(run_id) / "results.json", [], threading.Event()

        def watch() -> None:
            last_sample = 0.0
            while not stop.wait(0.2):
                try:
                    rounds = len(json.loads(path.read_text())["rounds"])
                except (OSError, ValueError, KeyError):
                    rounds = 0
                for n in range(len(landed) + 1, rounds + 1):
                    landed.append(time.monotonic())
                    if on_round is not None:
                        on_round(n)
                if sample is not None and time.monotonic() - last_sample >= 1.0:
                    sample()
                    last_sample = time.monotonic()

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        deadline, run = time.monotonic() + timeout, self.fed.watch(run_id)
        try:
            while time.monotonic() < deadline:
                status = str(run.check().get("status", ""))
                if status.startswith("finished"):
                    return status, landed
                time.sleep(0.5)
        finally:
            stop.set()
            watcher.join()
        raise TimeoutError(f"run {run_id} did not finish within {timeout:.0f} s")


@contextmanager
def multisite_federation(
    root: Path,
    data: dict[str, Path],
    *,
    topology: netns.Topology | None,
    relay: dict[str, float] | None = None,
    activation_timeout: float = 120.0,
    budget: bool = False,
) -> Iterator[MultiSite]:
    """Sites for `data` (institution -> its data file) under `root`, their SuperLink and nodes running.
    `relay`: `Topology.start_relay` options (delay, cut_every, outage); `activation_timeout`: how long each
    node may take to be accepted and warm (many nodes warming at once on 2 cores take minutes); `budget`: also the
    budget service over TLS in the coordinator's namespace, each hospital registered with it (needs `topology`)."""
    sans = netns.SANS if topology is not None else ("localhost", "127.0.0.1")
    if budget and topology is None:
        raise ValueError("the budget service runs in the coordinator's namespace: pass a topology")
    budget_url = f"https://{netns.COORDINATOR_IP}:{free_port()}" if budget else ""
    fed_dir = init_federation(root / "coordinator", sans=sans, budget_url=budget_url)
    pending = SuperLinkConnection(NOT_RUNNING, fed_dir.ca_certificate)
    with ExitStack() as stack:
        target, run_config = None, {}
        if topology is not None and budget:
            with topology.entered(COORDINATOR):  # the coordinator's own calls; hospitals dial it across the bridge
                target, run_config = _start_budget_service(stack, fed_dir, budget_url, topology=topology)
                sites = join_and_register(fed_dir, root / "hospitals", list(data), superlink=pending, budget=target)
        else:
            sites = join_and_register(fed_dir, root / "hospitals", list(data), superlink=pending)
        hospital_key_ceremony(fed_dir, sites, maker=next(iter(data)))
        placement = topology or Loopback()
        fed = stack.enter_context(
            LocalFederation(fed_dir.root, placement=placement, activation_timeout=activation_timeout)
        )
        fed.start_superlink()  # in the coordinator's namespace; completes the pending registrations
        if topology is not None:
            topology.start_relay(fed.fleet_port, **(relay or {}))
        nodes = [fed.add_site(s.root, node_config={"data-path": str(data[n])}, wait=False) for n, s in sites.items()]
        for node in nodes:
            fed.wait_for_node(node)
        yield MultiSite(fed, fed_dir, sites, topology, run_config)


def _start_budget_service(
    stack: ExitStack, fed: FederationDir, url: str, *, topology: netns.Topology
) -> tuple[BudgetTarget, dict[str, str]]:
    """The budget service over TLS on the coordinator's address, in its namespace, stopped with `stack` (also on
    failure); and a run config with an aggregator token, so that a run's ServerApp reports to its ledger."""
    host, port = url.removeprefix("https://").rsplit(":", 1)
    budget_dir = fed.admin_token_file.parent
    url = stack.enter_context(
        running_budget_service(
            database_url=f"sqlite:///{budget_dir / 'ledger.db'}",
            admin_token=fed.admin_token(),
            host=host,
            port=int(port),
            log_path=budget_dir / "service.log",
            tls=fed.budget_tls(),
            prefix=topology.prefix(COORDINATOR),
        )
    )
    target = BudgetTarget(url, fed.admin_token(), fed.ca_certificate)
    with BudgetAdmin(url, target.admin_token, ca_certificate=fed.ca_certificate) as admin:
        token = write_private(budget_dir / "aggregator-token", admin.create_aggregator_token("multisite-serverapp"))
    run_config = {"budget-url": url, "budget-token-file": str(token), "budget-ca-file": str(fed.ca_certificate)}
    return target, run_config
