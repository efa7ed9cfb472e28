"""A hospital's site: keys made there, a kit without private keys, installed into the kit's layout."""

from __future__ import annotations

import json
import shutil
import stat
import tomllib
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fedcare.cli import app
from fedcare.demo_sites import join_and_register
from fedcare.federation_dir import FederationDir, init_federation
from fedcare.kits import KitOptions, write_budget_token
from fedcare.registration import list_institutions, register_institution, revoke_institution, sync
from fedcare.site import SiteError, install_kit, join_site
from fedcare.superlink_control import SuperLinkConnection
from tests.support.secret_scan import scan_for_secrets

NOWHERE = "127.0.0.1:9"  # nothing listens: registrations stay pending
ONE_STEP_KIT = {"README.md", "ca.crt", "kit.json", "node-config.toml", "node.key", "node.pub"}


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def fed(tmp_path: Path) -> FederationDir:
    return init_federation(tmp_path / "fed", control_address=NOWHERE, budget_url="")


def test_join_makes_the_keys_at_the_site_and_refuses_to_replace_them(tmp_path: Path) -> None:
    site, request = join_site(tmp_path / "site", "St Mary")
    assert {p.name for p in site.root.iterdir()} == {
        "node.key",
        "node.pub",
        "sealing.key",
        "sealing.pub",
        "registration-request.json",
    }
    assert _mode(site.root) == 0o700 and _mode(site.node_key) == 0o600 and _mode(site.sealing_key) == 0o600
    with pytest.raises(SiteError, match="--force"):
        join_site(site.root, "St Mary")
    _, again = join_site(site.root, "St Mary", force=True)
    assert again.node_key_fingerprint != request.node_key_fingerprint


def test_a_kit_for_a_request_holds_no_private_key_and_the_registry_says_who_made_the_keys(
    fed: FederationDir, tmp_path: Path
) -> None:
    site, request = join_site(tmp_path / "site", "St Mary")
    report = register_institution(fed, KitOptions("St Mary", 5.0, 1e-5), request=request, superlink=None, budget=None)
    kit = report.kit
    assert {p.name for p in kit.iterdir()} == {
        "README.md",
        "ca.crt",
        "kit.json",
        "node-config.toml",
        "node.pub",
        "sealing.pub",
    }
    assert scan_for_secrets(kit, sealing_public_keys=[request.sealing_public_key]) == []
    assert (kit / "node.pub").read_text().strip() == request.node_public_key
    info = json.loads((kit / "kit.json").read_text())
    assert info["keys-made-by"] == "institution" and info["node-key-fingerprint"] == request.node_key_fingerprint
    (record,) = list_institutions(fed)
    assert record.keys_made_by == "institution" and record.sealing_public_key == request.sealing_public_key
    assert record.fingerprint == request.node_key_fingerprint and record.superlink == "pending"

    one_step = register_institution(fed, KitOptions("St Luke", 5.0, 1e-5), superlink=None, budget=None)
    assert json.loads((one_step.kit / "kit.json").read_text())["keys-made-by"] == "coordinator"
    assert {r.name: r.keys_made_by for r in list_institutions(fed)} == {
        "St Mary": "institution",
        "St Luke": "coordinator",
    }


def test_an_installed_site_has_the_kit_layout_with_paths_in_the_site(fed: FederationDir, tmp_path: Path) -> None:
    (site,) = join_and_register(fed, tmp_path / "sites", ["St Mary"]).values()
    names = {p.name for p in site.root.iterdir()}
    assert ONE_STEP_KIT <= names
    assert names - ONE_STEP_KIT == {"sealing.key", "sealing.pub", "registration-request.json"}
    config = tomllib.loads(site.node_config.read_text())
    assert config == {
        "institution": "St Mary",
        "data-path": f"{site.root}/data.csv",
        "state-dir": f"{site.root}/state",
        "epsilon-limit": 10.0,
    }
    info = json.loads((site.root / "kit.json").read_text())
    assert info["node-config"] == str(site.node_config) and info["site"] == str(site.root)
    assert (site.root / "ca.crt").read_bytes() == fed.ca_certificate.read_bytes()
    assert "flower-supernode" in (site.root / "README.md").read_text()


def test_install_refuses_a_kit_made_for_another_key_and_a_one_step_kit(fed: FederationDir, tmp_path: Path) -> None:
    sites = join_and_register(fed, tmp_path / "sites", ["St Mary", "St Luke"])
    mary, luke = sites["St Mary"], sites["St Luke"]
    with pytest.raises(SiteError) as refused:
        install_kit(fed.kit_dir("St Mary"), luke.root)
    message = str(refused.value)
    assert mary.joined_request().node_key_fingerprint in message
    assert luke.joined_request().node_key_fingerprint in message and "another site" in message
    join_site(mary.root, "St Mary", force=True)  # re-joined: the old kit no longer fits
    with pytest.raises(SiteError, match="was made for node key"):
        install_kit(fed.kit_dir("St Mary"), mary.root)
    one_step = register_institution(fed, KitOptions("General", 5.0, 1e-5), superlink=None, budget=None)
    with pytest.raises(SiteError, match="coordinator-made keys"):
        install_kit(one_step.kit, mary.root)
    with pytest.raises(SiteError, match="not a joined site"):
        install_kit(fed.kit_dir("St Luke"), tmp_path / "empty")


def test_the_budget_token_travels_sealed_and_is_unsealed_at_the_site(fed: FederationDir, tmp_path: Path) -> None:
    sites = join_and_register(fed, tmp_path / "sites", ["St Mary", "St Luke"])
    record = {r.name: r for r in list_institutions(fed)}["St Mary"]
    kit = fed.kit_dir("St Mary")
    sealed = write_budget_token(kit, "tok-123", sealing_public_key=record.sealing_public_key)
    assert sealed.name == "budget-token.sealed" and b"tok-123" not in sealed.read_bytes()
    assert not (kit / "budget-token").exists()
    report = install_kit(kit, sites["St Mary"].root)
    token = sites["St Mary"].root / "budget-token"
    assert token.read_text().strip() == "tok-123" and _mode(token) == 0o600
    assert any("budget token unsealed" in line for line in report.done)
    stolen = tmp_path / "stolen"
    shutil.copytree(kit, stolen)
    with pytest.raises(SiteError):  # St Luke cannot install St Mary's kit, let alone open its token
        install_kit(stolen, sites["St Luke"].root)


def test_pending_sync_revoke_and_list_work_for_requests(fed: FederationDir, tmp_path: Path) -> None:
    nowhere = SuperLinkConnection(NOWHERE, fed.ca_certificate)
    join_and_register(fed, tmp_path / "sites", ["St Mary"], superlink=nowhere)
    (record,) = list_institutions(fed)
    assert record.superlink == "pending" and record.pending == ["SuperLink: register node key"]
    (report,) = sync(fed, superlink=nowhere, budget=None)
    assert report.pending and any("not reachable" in p for p in report.problems)
    revoked = revoke_institution(fed, "St Mary", superlink=nowhere, budget=None)
    assert revoked.record.superlink == "revoked" and not revoked.record.active


def test_sync_does_every_pending_institution_and_each_keeps_its_own_record(fed: FederationDir, tmp_path: Path) -> None:
    """`sync` runs the institutions side by side (fedcare/registration.py); each report is its own."""
    nowhere = SuperLinkConnection(NOWHERE, fed.ca_certificate)
    names = ["St Mary", "St Luke", "Royal"]
    join_and_register(fed, tmp_path / "sites", names, superlink=nowhere)
    reports = sync(fed, superlink=nowhere, budget=None)
    assert sorted(r.name for r in reports) == sorted(names)
    assert all(r.record.name == r.name and len(r.problems) == 1 and "not reachable" in r.problems[0] for r in reports)
    assert all(r.superlink == "pending" for r in list_institutions(fed))  # saved, and still pending


def test_cli_join_register_by_request_install_and_the_one_step_warning(tmp_path: Path) -> None:
    runner = CliRunner()
    root, site = tmp_path / "fed", tmp_path / "mary"
    assert (
        runner.invoke(app, ["federation", "init", str(root), "--superlink", NOWHERE, "--budget-url", ""]).exit_code == 0
    )
    joined = runner.invoke(app, ["institution", "join", "St Mary", "--out", str(site)])
    assert joined.exit_code == 0, joined.output
    assert (site / "node.key").read_text() not in joined.output
    common = ["--epsilon-limit", "4", "--delta", "1e-5", "--federation", str(root)]
    done = runner.invoke(
        app, ["institution", "register", "--request", str(site / "registration-request.json"), *common]
    )
    assert done.exit_code == 3, done.output  # kit made; registration pending
    assert "holds no private key" in done.output and "has seen its private" not in done.output
    kit = root / "institutions" / "st-mary"
    installed = runner.invoke(app, ["institution", "install", "--kit", str(kit), "--site", str(site)])
    assert installed.exit_code == 0, installed.output
    assert tomllib.loads((site / "node-config.toml").read_text())["state-dir"] == f"{site.resolve()}/state"
    wrong = runner.invoke(
        app, ["institution", "register", "St Luke", "--request", str(site / "registration-request.json"), *common]
    )
    assert wrong.exit_code == 2 and "differs from the request" in wrong.output
    one_step = runner.invoke(app, ["institution", "register", "St Luke", *common])
    assert one_step.exit_code == 3 and "has seen its private node key" in one_step.output
