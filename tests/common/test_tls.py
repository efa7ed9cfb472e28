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
