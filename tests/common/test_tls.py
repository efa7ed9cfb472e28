"""Throwaway TLS material: a CA, and a server certificate it signed for the local SuperLink."""

from __future__ import annotations

import ipaddress
import os
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID

from common.tls import TlsFiles, make_server_tls


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return make_server_tls(tmp_path_factory.mktemp("tls"))


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_the_three_files_are_written_and_no_ca_key(tls: TlsFiles) -> None:
    assert sorted(os.listdir(tls.ca_certificate.parent)) == ["ca.crt", "server.key", "server.pem"]


def test_the_server_certificate_verifies_against_the_ca(tls: TlsFiles) -> None:
    ca, server = _cert(tls.ca_certificate), _cert(tls.server_certificate)
    server.verify_directly_issued_by(ca)
    ca.verify_directly_issued_by(ca)  # self-signed root


def test_the_server_certificate_does_not_verify_against_another_ca(tls: TlsFiles, tmp_path: Path) -> None:
    other = make_server_tls(tmp_path)
    with pytest.raises(InvalidSignature):
        _cert(tls.server_certificate).verify_directly_issued_by(_cert(other.ca_certificate))


def test_the_server_certificate_names_localhost_and_loopback(tls: TlsFiles) -> None:
    san = _cert(tls.server_certificate).extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "localhost" in san.get_values_for_type(x509.DNSName)
    ips = san.get_values_for_type(x509.IPAddress)
    assert ipaddress.ip_address("127.0.0.1") in ips
    assert ipaddress.ip_address("::1") in ips


def test_only_the_ca_can_sign_and_the_server_is_for_server_auth(tls: TlsFiles) -> None:
    ca, server = _cert(tls.ca_certificate), _cert(tls.server_certificate)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is True
    assert server.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    eku = server.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.SERVER_AUTH in eku


def test_the_server_key_is_private_and_matches_the_certificate(tls: TlsFiles) -> None:
    assert oct(stat.S_IMODE(os.stat(tls.server_key).st_mode)) == oct(0o600)
    key = serialization.load_pem_private_key(tls.server_key.read_bytes(), password=None)
    public = lambda k: k.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)  # noqa: E731
    assert public(key.public_key()) == public(_cert(tls.server_certificate).public_key())


def test_custom_hostnames_and_ips_go_into_the_certificate(tmp_path: Path) -> None:
    files = make_server_tls(tmp_path, hostnames=("superlink.example",), ips=("10.0.0.5",))
    san = _cert(files.server_certificate).extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["superlink.example"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("10.0.0.5")]


def test_regenerating_over_a_world_readable_key_makes_it_private(tmp_path: Path) -> None:
    """The docstring promises server.key is 0600; re-provisioning must not keep a wider mode."""
    stale = tmp_path / "server.key"
    stale.write_text("old key")
    stale.chmod(0o644)
    files = make_server_tls(tmp_path)
    assert oct(stat.S_IMODE(os.stat(files.server_key).st_mode)) == oct(0o600)


def test_an_existing_ca_issues_another_server_certificate(tmp_path: Path) -> None:
    from common.tls import issue_server_certificate

    first = make_server_tls(tmp_path / "link", ca_key_path=tmp_path / "ca.key")
    files = issue_server_certificate(
        ca_certificate=first.ca_certificate,
        ca_key=tmp_path / "ca.key",
        certificate=tmp_path / "budget" / "server.pem",
        key=tmp_path / "budget" / "server.key",
        hostnames=("budget.example.org",),
        ips=("10.0.0.7",),
    )
    cert = _cert(files.server_certificate)
    cert.verify_directly_issued_by(_cert(first.ca_certificate))
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["budget.example.org"]
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["10.0.0.7"]
    assert cert.not_valid_after_utc <= _cert(first.ca_certificate).not_valid_after_utc
    assert oct(stat.S_IMODE(os.stat(files.server_key).st_mode)) == oct(0o600)


def test_issuing_needs_the_matching_ca_key(tmp_path: Path) -> None:
    from common.tls import CertificateAuthorityError, issue_server_certificate

    mine = make_server_tls(tmp_path / "mine", ca_key_path=tmp_path / "mine.key")
    make_server_tls(tmp_path / "other", ca_key_path=tmp_path / "other.key")
    common = dict(certificate=tmp_path / "s.pem", key=tmp_path / "s.key", hostnames=("h",), ips=())
    with pytest.raises(CertificateAuthorityError, match="is not the key of the CA"):
        issue_server_certificate(ca_certificate=mine.ca_certificate, ca_key=tmp_path / "other.key", **common)
    with pytest.raises(CertificateAuthorityError, match="missing.*offline"):
        issue_server_certificate(ca_certificate=mine.ca_certificate, ca_key=tmp_path / "gone.key", **common)
    assert not (tmp_path / "s.pem").exists()
