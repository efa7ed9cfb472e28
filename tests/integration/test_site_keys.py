"""Hospitals make and keep their own secrets, end to end with real processes.

Three hospitals join with their own keys, the coordinator registers their requests (the SuperLink is
down: pending, completed when it starts), one hospital makes the CKKS key set, the coordinator relays
the sealed copies, and an HE federation of SuperNodes started from the site directories trains. Then
one hospital is revoked, another makes a new key set, a run on it trains, and a run started with the
old key set's public context is refused by every hospital, naming both key ids. Throughout, the
coordinator's folder (federation directory, SuperLink database, logs, run results) holds no secret of
any hospital.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from common.demo_data import DemoSplit
from fedcare.demo_sites import join_and_register
from fedcare.federation import LocalFederation
from fedcare.federation_dir import FederationDir, init_federation
from fedcare.he_ceremony import KeySetBundle, make_key_set
from fedcare.he_relay import key_set_problem, relay_key_set, server_key_files
from fedcare.kits import RUN_HE_CONTEXT_KEY
from fedcare.registration import list_institutions, revoke_institution
from fedcare.roster import write_roster
from fedcare.site import SiteDir, install_kit
from fedcare.superlink_control import SuperLinkConnection
from tests.integration.conftest import APP_DIR, assert_all_exited, wait_finished
from tests.support.secret_scan import scan_for_secrets

pytestmark = pytest.mark.slow
NOT_RUNNING = "127.0.0.1:9"
NAMES = ["hospital-1", "hospital-2", "hospital-3"]


def _key_ceremony(fed: FederationDir, sites: dict[str, SiteDir], *, maker: str, bundle: Path) -> KeySetBundle:
    """Coordinator: roster. Maker: key set. Coordinator: relay. Every other hospital: install its kit."""
    _, roster = write_roster(fed)
    made = make_key_set(sites[maker], roster, bundle=bundle)
    relay_key_set(fed, made.directory)
    for entry in roster.entries:
        if entry.institution != maker:
            install_kit(fed.kit_dir(entry.institution), sites[entry.institution].root)
    return made


def _results(runs: Path, run_id: int) -> dict:
    return json.loads((runs / str(run_id) / "results.json").read_text())


def test_hospital_made_keys_an_he_run_revocation_rekey_and_a_stale_key_set_refused(
    tmp_path: Path, breast_cancer_split: DemoSplit
) -> None:
    split = breast_cancer_split
    fed_dir = init_federation(tmp_path / "coordinator", control_address=NOT_RUNNING, budget_url="")
    sites = join_and_register(
        fed_dir, tmp_path / "sites", NAMES, superlink=SuperLinkConnection(NOT_RUNNING, fed_dir.ca_certificate)
    )
    first = _key_ceremony(fed_dir, sites, maker="hospital-1", bundle=tmp_path / "bundle-1")
    runs = fed_dir.root / "runs"
    run_config = {
        "num-rounds": 1,
        "local-epochs": 1,
        "schema-path": str(split.schema_path),
        "results-dir": str(runs),
        "min-nodes": 3,
        "dp": False,
        "privacy-mode": "he",
        RUN_HE_CONTEXT_KEY: str(server_key_files(fed_dir).server_context),
    }
    data = dict(zip(NAMES, split.hospital_paths, strict=True))

    with LocalFederation(fed_dir.root) as fed:
        fed.start_superlink()  # completes the three pending node registrations
        assert all(r.superlink == "registered" and r.keys_made_by == "institution" for r in list_institutions(fed_dir))
        started = {
            name: fed.add_site(site.root, node_config={"data-path": str(data[name])}, wait=False)
            for name, site in sites.items()
        }
        nodes = dict(zip(started, fed.wait_for_nodes(list(started.values())), strict=True))
        run_1 = fed.submit(app_dir=APP_DIR, run_config=run_config)
        assert wait_finished(fed, run_1) == "finished:completed"

        report = revoke_institution(fed_dir, "hospital-3", superlink=fed.connection, budget=None)
        assert report.record.superlink == "revoked"
        fed.kill(nodes.pop("hospital-3"))  # the hospital stops its node; the SuperLink already dropped it
        assert "hospital-3" in (key_set_problem(fed_dir) or "")
        remaining = {name: sites[name] for name in nodes}
        second = _key_ceremony(fed_dir, remaining, maker="hospital-2", bundle=tmp_path / "bundle-2")
        assert second.key_id != first.key_id and key_set_problem(fed_dir) is None

        run_2 = fed.submit(app_dir=APP_DIR, run_config={**run_config, "min-nodes": 2})
        assert wait_finished(fed, run_2) == "finished:completed"

        stale = tmp_path / "stale-server"
        stale.mkdir()
        for name in ("he-public.ctx", "he-params.json"):
            shutil.copyfile(first.directory / name, stale / name)
        run_3 = fed.submit(
            app_dir=APP_DIR,
            run_config={**run_config, "min-nodes": 2, RUN_HE_CONTEXT_KEY: str(stale / "he-public.ctx")},
        )
        assert wait_finished(fed, run_3) == "finished:failed"
    assert_all_exited(fed.seen_pids)

    one, two, three = _results(runs, run_1), _results(runs, run_2), _results(runs, run_3)
    assert one["privacy"]["he"]["key_id"] == first.key_id
    assert one["rounds"][0]["participants"] == NAMES
    assert two["privacy"]["he"]["key_id"] == second.key_id
    assert two["rounds"][0]["participants"] == ["hospital-1", "hospital-2"]
    assert three["privacy"]["he"]["key_id"] == first.key_id and three["status"] == "failed"
    refusals = three["rounds"][0]["rejected"]
    assert sorted(r["institution"] for r in refusals) == ["hospital-1", "hospital-2"]
    for refusal in refusals:
        assert refusal["code"] == "he-key-mismatch"
        assert first.key_id in refusal["reason"] and second.key_id in refusal["reason"]

    sealing_keys = [s.joined_request().sealing_public_key for s in sites.values()]
    node_keys = {" ".join(s.node_public_key.read_text().split()[:2]) for s in sites.values()}
    at_coordinator = scan_for_secrets(fed_dir.root, sealing_public_keys=sealing_keys)
    assert {f.path.relative_to(fed_dir.root).as_posix() for f in at_coordinator} == {
        "budget/server.key",  # the budget service's own TLS key
        "ca/ca.key",
        "superlink/server.key",
    }
    assert not {f.public for f in at_coordinator} & node_keys
