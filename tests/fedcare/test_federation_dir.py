"""The federation directory's budget service certificate: issued by the federation CA for the names asked for."""

from __future__ import annotations

import stat
from pathlib import Path

from cryptography import x509
from typer.testing import CliRunner

from fedcare.cli import app
from fedcare.federation_dir import FederationDir, init_federation

NOWHERE = "127.0.0.1:9"


def _sans(path: Path) -> tuple[list[str], list[str]]:
    cert = x509.load_pem_x509_certificate(path.read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return san.get_values_for_type(x509.DNSName), [str(ip) for ip in san.get_values_for_type(x509.IPAddress)]


def test_init_issues_the_budget_certificate_from_the_federation_ca(tmp_path: Path) -> None:
    fed = init_federation(
        tmp_path / "fed",
        sans=("superlink.example.org",),
        budget_sans=("budget.example.org", "10.0.0.8"),
        control_address=NOWHERE,
    )
    ca = x509.load_pem_x509_certificate(fed.ca_certificate.read_bytes())
    x509.load_pem_x509_certificate(fed.budget_certificate.read_bytes()).verify_directly_issued_by(ca)
    assert _sans(fed.budget_certificate) == (["budget.example.org"], ["10.0.0.8"])
    assert _sans(fed.server_certificate) == (["superlink.example.org"], [])
    assert stat.S_IMODE(fed.budget_key.stat().st_mode) == 0o600
    config = fed.config()
    assert config.budget_dns_names == ("budget.example.org",) and config.budget_ip_addresses == ("10.0.0.8",)
    assert config.budget_url.startswith("https://")
    default = init_federation(tmp_path / "default", sans=("coord.example.org", "10.1.1.1"), control_address=NOWHERE)
    assert _sans(default.budget_certificate) == (["coord.example.org"], ["10.1.1.1"])


def test_budget_cert_reissues_it_for_the_names_an_operator_gives(tmp_path: Path) -> None:
    runner = CliRunner()
    root = tmp_path / "fed"
    assert runner.invoke(app, ["federation", "init", str(root), "--superlink", NOWHERE]).exit_code == 0
    fed = FederationDir(root)
    result = runner.invoke(
        app,
        [
            "federation",
            "budget-cert",
            "--federation",
            str(root),
            "--san",
            "budget.hospital-net.org",
            "--san",
            "192.0.2.4",
        ],
    )
    assert result.exit_code == 0, result.output
    assert _sans(fed.budget_certificate) == (["budget.hospital-net.org"], ["192.0.2.4"])
    assert fed.config().budget_dns_names == ("budget.hospital-net.org",)
    assert "--tls-certfile" in result.output and "BEGIN" not in result.output
    fed.ca_key.unlink()  # kept offline: nothing can be issued, and the command says why
    refused = runner.invoke(app, ["federation", "budget-cert", "--federation", str(root), "--san", "x.example"])
    assert refused.exit_code == 2 and "CA key" in refused.output and "Traceback" not in refused.output
