"""`fedcare demo` as a deployment: one folder per site, and each site keeps only its own secrets.

A real demo run (budget service, SuperLink with TLS and node authentication, three hospitals' nodes, HE
mode, two rounds): every hospital joins with its own keys, hospital-1 makes the CKKS key set, the
coordinator relays it sealed. Afterwards a scan that loads every file finds, in the coordinator's
folder, only its own TLS keys (no node key, no sealing key, no CKKS secret), and in each hospital's
folder exactly its own node key, sealing key and CKKS secret context, no other hospital's.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from rich.console import Console

from fedcare.demo import DemoOptions, run_demo
from fedcare.federation_dir import FederationDir
from fedcare.registration import list_institutions
from fedcare.site import SiteDir
from tests.support.secret_scan import scan_for_secrets

pytestmark = pytest.mark.slow
NAMES = ["hospital-1", "hospital-2", "hospital-3"]


def _mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def test_the_demo_lays_out_one_folder_per_site_and_each_keeps_its_own_secrets(tmp_path: Path) -> None:
    out, log = tmp_path / "demo", tmp_path / "demo.log"
    started = time.monotonic()
    with open(log, "w") as stream:
        outcome = run_demo(
            DemoOptions(hospitals=3, rounds=2, out=out, mode="he"), console=Console(file=stream, width=200)
        )
    wall = time.monotonic() - started
    printed = log.read_text()
    assert outcome.status == "finished:completed", printed
    assert outcome.holdout_accuracy is not None and 0.5 < outcome.holdout_accuracy <= 1.0
    assert f"held-out data (no hospital saw it): {outcome.holdout_accuracy:.4f}" in printed
    assert [r["status"] for r in outcome.results["rounds"]] == ["aggregated", "aggregated"]
    assert outcome.results["privacy"]["he"]["key_id"]

    coordinator = FederationDir(out / "coordinator")
    sites = {name: SiteDir(out / "hospitals" / name) for name in NAMES}
    assert outcome.results_path.is_relative_to(coordinator.root) and outcome.budget_url
    records = list_institutions(coordinator)
    assert [r.name for r in records] == NAMES
    for record in records:
        assert record.superlink == "registered" and record.node_id, record
        assert record.budget == "registered" and record.keys_made_by == "institution", record
        assert not (coordinator.kit_dir(record.name) / "node.key").exists()
        site = sites[record.name]
        for secret in (site.node_key, site.sealing_key, site.root / "budget-token", site.he_secret_context):
            assert _mode(secret) == 0o600, secret
        assert (site.root / "data.csv").exists() and (site.root / "state" / "privacy-accountant.json").exists()
    superlink_log = (coordinator.root / "logs" / "superlink.log").read_text()
    command = superlink_log.splitlines()[0]
    assert "--enable-supernode-auth" in command and "--ssl-certfile" in command and "--insecure" not in command
    assert superlink_log.count("[ControlServicer.RegisterNode] Created node_id") >= 3  # `flwr supernode register`
    for name in NAMES:
        node = (coordinator.root / "logs" / f"supernode-{name}.log").read_text().splitlines()[0]
        assert f"--kit {sites[name].root}" in node and "--insecure" not in node  # its own key, from its own site

    requests = {name: site.joined_request() for name, site in sites.items()}
    sealing_keys = [r.sealing_public_key for r in requests.values()]
    node_keys = {name: " ".join(site.node_public_key.read_text().split()[:2]) for name, site in sites.items()}
    at_coordinator = scan_for_secrets(coordinator.root, sealing_public_keys=sealing_keys)
    assert {f.path.relative_to(coordinator.root).as_posix() for f in at_coordinator} == {
        "budget/server.key",  # the budget service's own TLS key
        "ca/ca.key",
        "superlink/server.key",
    }
    assert not {f.public for f in at_coordinator} & set(node_keys.values())
    key_id = outcome.results["privacy"]["he"]["key_id"]
    for name, site in sites.items():
        found = {
            (f.path.relative_to(site.root).as_posix(), f.kind, " ".join(f.public.split()[:2]))
            for f in scan_for_secrets(site.root, sealing_public_keys=sealing_keys)
        }
        assert found == {
            ("node.key", "private-key", node_keys[name]),
            ("sealing.key", "nacl-private-key", requests[name].sealing_public_key),
            ("he-secret.ctx", "tenseal-secret-context", key_id),
        }, found
    print(f"\ndemo wall time {wall:.1f} s, held-out accuracy {outcome.holdout_accuracy:.4f}")
