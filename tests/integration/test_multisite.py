"""A federation across real network boundaries: each site in its own network namespace, behind a slow, lossy link.

The coordinator's SuperLink (TLS, node authentication) runs in one namespace, each hospital's node
(`fedcare node start --kit SITE --data FILE`) in its own, and the hospitals reach the coordinator only
through a relay that adds 40 ms of round trip, resets connections, and counts bytes per hospital; each
hospital's link is held to 20 Mbit/s (tbf). Keys are made where they are used, as in a deployment:
each hospital joins with its own node key, the coordinator registers the requests, one hospital makes
the CKKS key set and the coordinator relays only sealed copies. One federation serves every test here:
an HE run (its ServerApp reports to the budget service, which runs over TLS in the coordinator's namespace),
a SecAgg+ run during which the relay resets every hospital's connection, and each hospital reading its own
budget from its namespace. See tests/support/netns.py.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from common.demo_data import DemoSplit
from fedcare.he_relay import server_key_files
from fedcare.kits import RUN_HE_CONTEXT_KEY
from tests.integration.conftest import APP_DIR, assert_all_exited
from tests.support import netns
from tests.support.multisite import MultiSite, multisite_federation

pytestmark = pytest.mark.slow
NAMES = ["hospital-1", "hospital-2", "hospital-3"]
ROUNDS = 3
# Flower's SuperLink marks a message delivered when it answers a SuperNode's pull (`delivered_at`), so a cut
# that loses that answer loses the message: the hospital reconnects but never sees that round's message, and
# the round goes on without it once `round-timeout` (default 600 s) has passed; SecAgg+ waits `secagg-timeout`
# per stage. 30 s keeps that short in the run with the cut.
CUT_RUN_TIMEOUTS = {"round-timeout": 30.0, "secagg-timeout": 30.0}


def _run_config(schema_path: Path, site: MultiSite, mode: str, **extra: Any) -> dict[str, Any]:
    """A 3-round run of every hospital with DP on (the default), on the breast-cancer MLP."""
    return {
        "num-rounds": ROUNDS,
        "local-epochs": 1,
        "schema-path": str(schema_path),
        "results-dir": str(site.runs),
        "min-nodes": len(NAMES),
        "privacy-mode": mode,
        **extra,
    }


def _run(site: MultiSite, run_config: dict[str, Any], *, cut: bool) -> tuple[int, str, dict[str, Any], dict[str, Any]]:
    """Submit a run and wait for it; with `cut`, reset every hospital's connection at the relay as soon as its
    first round is recorded. Returns the run id, Flower's final status, and the relay's counters before and
    after the run."""
    topology = site.topology
    assert topology is not None
    before = topology.counters()
    run_id = site.fed.submit(app_dir=APP_DIR, run_config=run_config)
    on_round = (lambda n: n == 1 and topology.cut_all()) if cut else None
    status, _ = site.round_times(run_id, timeout=300, on_round=on_round)
    time.sleep(0.6)  # the relay writes its counters twice a second
    return run_id, status, before, topology.counters()


@pytest.fixture(scope="session")
def no_leftover_namespaces() -> None:
    """Fail (never skip) without root or iproute2; remove what a killed session left behind."""
    try:
        netns.require_netns()
    except netns.NetnsUnavailable as exc:
        pytest.fail(f"multi-site tests cannot run here: {exc}")
    netns.sweep_leftovers()


@pytest.fixture(scope="module")
def multisite(
    tmp_path_factory: pytest.TempPathFactory, breast_cancer_split: DemoSplit, no_leftover_namespaces: None
) -> Iterator[MultiSite]:
    root = tmp_path_factory.mktemp("multisite")
    topology = netns.build_topology(NAMES, workdir=root / "net")
    data = dict(zip(NAMES, breast_cancer_split.hospital_paths, strict=True))
    try:
        relay = {"delay": 0.02, "outage": 1.0}
        with multisite_federation(root, data, topology=topology, relay=relay, budget=True) as site:
            yield site
        assert_all_exited(site.fed.seen_pids)
    finally:
        topology.close()
    assert not [n for n in netns.namespaces() if n.startswith(topology.bridge.removesuffix("bridge"))]


def _assert_lived_through_the_cut(results: dict[str, Any], before: dict[str, Any], after: dict[str, Any]) -> None:
    """Every hospital was cut and came back: each round aggregated (without a hospital whose message the cut
    lost, see CUT_RUN_TIMEOUTS), or failed with a reason and a later one aggregated; the last round aggregated
    with every hospital."""
    rounds = results["rounds"]
    assert [r["round"] for r in rounds] == list(range(1, ROUNDS + 1))
    for i, entry in enumerate(rounds):
        if entry["status"] != "aggregated":
            assert entry["status"] == "failed" and entry["reason"], entry
            assert any(r["status"] == "aggregated" for r in rounds[i + 1 :]), rounds
    assert rounds[-1]["status"] == "aggregated" and rounds[-1]["participants"] == NAMES
    for name in NAMES:
        was, now = before["sites"][name], after["sites"][name]
        assert now["cuts"] > was["cuts"], f"{name} was never cut: {after['cuts']}"
        assert now["connections"] > was["connections"], f"{name} did not reconnect after its cut"


def _assert_dp_spent(results: dict[str, Any]) -> None:
    """DP was on: every hospital that took part in a round reports the epsilon its own accountant spent."""
    assert results["dp"]["enabled"] is True
    for entry in results["rounds"]:
        for name in entry["participants"]:
            assert entry["epsilon"][name] is not None and entry["epsilon"][name] > 0, entry


def _assert_traffic_through_the_relay(before: dict[str, Any], after: dict[str, Any]) -> None:
    """Each hospital's updates went up and the global model came down through the relay, on its own link."""
    for name in NAMES:
        up = after["sites"][name]["up"] - before["sites"][name]["up"]
        down = after["sites"][name]["down"] - before["sites"][name]["down"]
        assert up > 10_000 and down > 10_000, f"{name}: {up} bytes up, {down} down through the relay"


def test_he_run_from_hospital_made_keys_across_namespaces_and_its_budgets_over_tls(
    multisite: MultiSite, breast_cancer_split: DemoSplit
) -> None:
    schema = breast_cancer_split.schema_path
    server_context = server_key_files(multisite.federation).server_context
    he_context = {RUN_HE_CONTEXT_KEY: str(server_context)}
    run_config = _run_config(schema, multisite, "he", **he_context, **multisite.budget_run_config)
    run_id, status, before, after = _run(multisite, run_config, cut=False)
    results = multisite.results(run_id)

    assert status == "finished:completed", results.get("error")
    assert results["privacy_mode"] == "he"
    assert [(r["status"], r["participants"]) for r in results["rounds"]] == [("aggregated", NAMES)] * ROUNDS
    _assert_dp_spent(results)
    _assert_traffic_through_the_relay(before, after)
    _assert_budgets_read_over_tls(multisite)


def test_secagg_run_across_namespaces_survives_a_cut(multisite: MultiSite, breast_cancer_split: DemoSplit) -> None:
    schema = breast_cancer_split.schema_path
    run_config = _run_config(schema, multisite, "secagg", **CUT_RUN_TIMEOUTS)
    run_id, status, before, after = _run(multisite, run_config, cut=True)
    results = multisite.results(run_id)

    assert status == "finished:completed", results.get("error")
    assert results["privacy_mode"] == "secagg"
    _assert_dp_spent(results)
    _assert_lived_through_the_cut(results, before, after)
    _assert_traffic_through_the_relay(before, after)


def _budget_show(site: MultiSite, name: str, *args: str) -> subprocess.Popen[str]:
    """`fedcare budget show --kit` as the hospital runs it: in its namespace, from its site directory."""
    assert site.topology is not None
    command = [*site.topology.prefix(name), sys.executable, "-m", "fedcare.cli", "budget", "show"]
    command += ["--kit", str(site.sites[name].root), *args]
    env = {**os.environ, "COLUMNS": "400", "PYTHONPATH": str(APP_DIR)}
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def _assert_budgets_read_over_tls(multisite: MultiSite) -> None:
    """Each hospital reads its own budget, with the events the HE run's ServerApp has just reported, from the
    budget service on the coordinator's address over TLS; another institution's budget is refused (403) in one
    line. Every query at once: each is a CLI start, the slow part."""
    others = {name: NAMES[(NAMES.index(name) + 1) % len(NAMES)] for name in NAMES}
    own = {name: _budget_show(multisite, name) for name in NAMES}
    refused = {name: _budget_show(multisite, name, "--institution", others[name]) for name in NAMES}
    for name in NAMES:
        out, err = own[name].communicate(timeout=120)
        assert own[name].returncode == 0, err
        assert multisite.federation.config().budget_url in out
        rounds = re.search(rf"{name}: epsilon spent .* \((?:delta \S+), (\d+) round\(s\)\)", out)
        assert rounds is not None and int(rounds.group(1)) >= ROUNDS, out
        assert "ledger events" in out
        out, err = refused[name].communicate(timeout=120)
        assert refused[name].returncode == 1, out
        assert "refused (403)" in err and len(err.strip().splitlines()) == 1, err
