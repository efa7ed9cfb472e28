"""Federation directories and hospitals' kits, with no SuperLink or budget service running (all pending)."""

from __future__ import annotations

import json
import stat
import tomllib
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_ssh_private_key, load_ssh_public_key
from typer.testing import CliRunner

from fedcare.cli import app
from fedcare.federation_dir import FederationDir, FederationDirError, init_federation, slugify, split_sans
from fedcare.kits import KitOptions
from fedcare.node_keys import read_fingerprint
from fedcare.registration import RegistrationError, list_institutions, register_institution, revoke_institution
from fedcare.superlink_control import SuperLinkConnection

NOWHERE = "127.0.0.1:9"  # the discard port: nothing listens, so every registration stays pending


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def fed(tmp_path: Path) -> FederationDir:
    return init_federation(
        tmp_path / "fed",
        sans=("superlink.example.org", "10.0.0.5"),
        control_address=NOWHERE,
        budget_url="http://127.0.0.1:9",
    )


def _register(fed: FederationDir, name: str, **options) -> object:
    link = SuperLinkConnection(NOWHERE, fed.ca_certificate)
    from fedcare.registration import budget_target

    return register_institution(fed, KitOptions(name, 5.0, 1e-5), superlink=link, budget=budget_target(fed), **options)


def test_init_makes_ca_certificate_keys_and_token_with_private_modes(fed: FederationDir) -> None:
    cert = x509.load_pem_x509_certificate(fed.server_certificate.read_bytes())
    cert.verify_directly_issued_by(x509.load_pem_x509_certificate(fed.ca_certificate.read_bytes()))
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["superlink.example.org"]
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["10.0.0.5"]
    for secret in (fed.server_key, fed.ca_key, fed.admin_token_file):
        assert _mode(secret) == 0o600, secret
    assert len(fed.admin_token()) >= 32
    config = fed.config()
    assert config.fleet_address == "superlink.example.org:9092" and not config.he


def test_init_never_overwrites_a_federation(fed: FederationDir) -> None:
    with pytest.raises(FederationDirError, match="never overwritten"):
        init_federation(fed.root)


def test_sans_and_slugs() -> None:
    assert split_sans(["a.example", "10.1.2.3", "::1"]) == (("a.example",), ("10.1.2.3", "::1"))
    with pytest.raises(ValueError, match="neither"):
        split_sans(["not a name"])
    assert slugify("St. Mary's Hospital") == "st-mary-s-hospital"


def test_a_kit_holds_what_the_hospital_needs_and_registrations_wait(fed: FederationDir) -> None:
    report = _register(fed, "St Mary")
    kit = report.kit
    assert kit == fed.root / "institutions" / "st-mary"
    assert sorted(p.name for p in kit.iterdir()) == [
        "README.md",
        "ca.crt",
        "kit.json",
        "node-config.toml",
        "node.key",
        "node.pub",
    ]
    key = load_ssh_private_key((kit / "node.key").read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp384r1"
    assert load_ssh_public_key((kit / "node.pub").read_bytes()).public_numbers() == key.public_key().public_numbers()
    assert _mode(kit / "node.key") == 0o600 and _mode(kit) == 0o700
    assert (kit / "ca.crt").read_bytes() == fed.ca_certificate.read_bytes()
    config = tomllib.loads((kit / "node-config.toml").read_text())
    assert config == {
        "institution": "St Mary",
        "data-path": f"{kit}/data.csv",
        "state-dir": f"{kit}/state",
        "epsilon-limit": 5.0,
    }
    readme = (kit / "README.md").read_text()
    assert "flower-supernode --superlink superlink.example.org:9092" in readme and "docker compose" in readme
    assert report.record.superlink == "pending" and report.record.budget == "pending"
    assert len(report.pending) == 2
    (listed,) = list_institutions(fed)
    assert listed.name == "St Mary" and listed.fingerprint == read_fingerprint(kit / "node.pub")


def test_an_existing_name_is_refused_unless_rotated(fed: FederationDir) -> None:
    first = _register(fed, "St Mary")
    old_key = (first.kit / "node.key").read_bytes()
    with pytest.raises(RegistrationError, match="--rotate"):
        _register(fed, "St Mary")
    assert (first.kit / "node.key").read_bytes() == old_key
    rotated = _register(fed, "St Mary", rotate=True)
    assert (rotated.kit / "node.key").read_bytes() != old_key
    assert rotated.record.fingerprint != first.record.fingerprint


def test_revoke_while_nothing_runs_is_recorded(fed: FederationDir) -> None:
    _register(fed, "St Mary")
    report = revoke_institution(fed, "St Mary", superlink=SuperLinkConnection(NOWHERE, fed.ca_certificate), budget=None)
    assert report.record.revoked_at is not None
    assert report.record.superlink == "revoked"  # its key was never admitted: nothing to unregister
    assert report.record.budget == "revoke-pending"
    with pytest.raises(RegistrationError, match="already revoked"):
        revoke_institution(fed, "St Mary", superlink=None, budget=None)
    with pytest.raises(RegistrationError, match="no institution named 'St Luke'"):
        revoke_institution(fed, "St Luke", superlink=None, budget=None)


def test_no_kit_holds_another_hospitals_secret_or_a_server_key(tmp_path: Path) -> None:
    fed = init_federation(tmp_path / "fed", he=True, control_address=NOWHERE, budget_url="")
    kits = [_register(fed, name).kit for name in ("St Mary", "St Luke", "General")]
    server_secrets = {fed.server_key.read_bytes(), fed.ca_key.read_bytes(), fed.admin_token().encode()}
    for kit in kits:
        own = {(kit / "node.key").read_bytes()}
        others = {(k / "node.key").read_bytes() for k in kits if k != kit}
        contents = [p.read_bytes() for p in kit.rglob("*") if p.is_file()]
        for content in contents:
            assert not any(secret.strip() in content for secret in server_secrets | others), kit
        assert own <= set(contents)
        assert b"PRIVATE KEY" not in b"".join(c for c in contents if c not in own)  # no other private key at all
        assert _mode(kit / "he-secret.ctx") == 0o600
        assert (kit / "he-secret.ctx").read_bytes() == (fed.he_dir / "hospital" / "he-secret.ctx").read_bytes()
        assert not any(p.name == "he-public.ctx" for p in kit.rglob("*"))


def test_cli_init_register_list_are_non_interactive(tmp_path: Path) -> None:
    runner = CliRunner()
    root = tmp_path / "fed"
    done = runner.invoke(
        app, ["federation", "init", str(root), "--san", "localhost", "--superlink", NOWHERE, "--budget-url", ""]
    )
    assert done.exit_code == 0, done.output
    token = FederationDir(root).admin_token()
    assert token not in done.output
    done = runner.invoke(
        app,
        [
            "institution",
            "register",
            "St Mary",
            "--epsilon-limit",
            "4",
            "--delta",
            "1e-5",
            "--federation",
            str(root),
            "--data-path",
            "/data/mary.csv",
            "--kit-root",
            "/kit",
        ],
    )
    assert done.exit_code == 3, done.output  # 3: made, registration pending
    assert "pending" in done.output and "SuperLink" in done.output
    kit = root / "institutions" / "st-mary"
    assert (kit / "node.key").read_text() not in done.output
    assert tomllib.loads((kit / "node-config.toml").read_text())["data-path"] == "/data/mary.csv"
    assert json.loads((kit / "kit.json").read_text())["node-config"] == "/kit/node-config.toml"
    again = runner.invoke(
        app,
        ["institution", "register", "St Mary", "--epsilon-limit", "4", "--delta", "1e-5", "--federation", str(root)],
    )
    assert again.exit_code == 2 and "--rotate" in again.output
    listed = runner.invoke(app, ["institution", "list", "--federation", str(root)])
    assert listed.exit_code == 0 and "St Mary" in listed.output


def test_register_can_write_the_hospitals_compose_override(tmp_path: Path) -> None:
    import yaml

    runner = CliRunner()
    root = tmp_path / "fed"
    assert (
        runner.invoke(app, ["federation", "init", str(root), "--superlink", NOWHERE, "--budget-url", ""]).exit_code == 0
    )
    done = runner.invoke(
        app,
        [
            "institution",
            "register",
            "North Clinic",
            "--epsilon-limit",
            "6",
            "--delta",
            "1e-5",
            "--federation",
            str(root),
            "--compose",
        ],
    )
    assert done.exit_code == 3, done.output  # the kit and the override are made; registration pending
    override = root / "compose" / "north-clinic.yml"
    document = yaml.safe_load(override.read_text())
    (service,) = document["services"]
    assert service == "north-clinic"
    assert any("institutions/north-clinic" in str(v) for v in document["services"][service]["volumes"])
    secret = (root / "institutions" / "north-clinic" / "node.key").read_text()
    assert secret not in override.read_text() and "compose override" in done.output
