"""A certificate authority and the server certificates it signs, made with `cryptography`.

One CA per federation signs every server certificate a hospital checks: the SuperLink's
(gRPC) and the budget service's (HTTPS). Throwaway federations (the demo and the tests)
use the same path, so even they run with TLS: the demo must exercise what a deployment does.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from common.private_files import write_private


@dataclass(frozen=True)
class TlsFiles:
    ca_certificate: Path
    server_certificate: Path
    server_key: Path


class CertificateAuthorityError(ValueError):
    """The CA's files are missing or do not belong together; the message says which file."""


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fedcare"), x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    )


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _make_ca(*, days: int) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(_name("fedcare federation CA"))
        .issuer_name(_name("fedcare federation CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA384())
    )
    return ca_cert, ca_key


def _write_server_pair(
    certificate: Path,
    key_path: Path,
    *,
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    hostnames: tuple[str, ...],
    ips: tuple[str, ...],
    days: int,
) -> None:
    if not hostnames and not ips:
        raise ValueError("a server certificate needs at least one DNS name or IP address")
    now = dt.datetime.now(dt.UTC)
    server_key = ec.generate_private_key(ec.SECP384R1())
    sans: list[x509.GeneralName] = [x509.DNSName(h) for h in hostnames]
    sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(_name(hostnames[0] if hostnames else ips[0]))
        .issuer_name(ca_cert.subject)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(min(now + dt.timedelta(days=days), ca_cert.not_valid_after_utc))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA384())
    )
    certificate.parent.mkdir(parents=True, exist_ok=True)
    write_private(key_path, _pem_key(server_key))  # the key first: a certificate never names a missing key
    certificate.write_bytes(server_cert.public_bytes(serialization.Encoding.PEM))


def make_server_tls(
    out_dir: Path,
    *,
    hostnames: tuple[str, ...] = ("localhost",),
    ips: tuple[str, ...] = ("127.0.0.1", "::1"),
    days: int = 365,
    ca_key_path: Path | None = None,
) -> TlsFiles:
    """Create `ca.crt`, `server.pem` and `server.key` (0600) in `out_dir`.

    The CA key is written (0600) only when `ca_key_path` is given: a federation that
    must later issue more server certificates (the budget service's, a renewed one) keeps
    it at the coordinating site; a throwaway federation has no use for it, so it never
    touches the disk.
    """
    if not hostnames and not ips:
        raise ValueError("the SuperLink certificate needs at least one DNS name or IP address")
    out_dir.mkdir(parents=True, exist_ok=True)
    ca_cert, ca_key = _make_ca(days=days)
    files = TlsFiles(out_dir / "ca.crt", out_dir / "server.pem", out_dir / "server.key")
    files.ca_certificate.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    _write_server_pair(
        files.server_certificate,
        files.server_key,
        ca_cert=ca_cert,
        ca_key=ca_key,
        hostnames=hostnames,
        ips=ips,
        days=days,
    )
    if ca_key_path is not None:
        write_private(ca_key_path, _pem_key(ca_key))
    return files


def issue_server_certificate(
    *,
    ca_certificate: Path,
    ca_key: Path,
    certificate: Path,
    key: Path,
    hostnames: tuple[str, ...],
    ips: tuple[str, ...],
    days: int = 825,
) -> TlsFiles:
    """Sign a new server key pair with the federation's existing CA: `key` (0600) and `certificate`.

    Hospitals already trust that CA (it is in every kit), so a certificate issued here is trusted
    without sending anything new to them. The validity never outlasts the CA's.
    """
    try:
        ca_cert = x509.load_pem_x509_certificate(Path(ca_certificate).read_bytes())
    except (OSError, ValueError) as exc:
        raise CertificateAuthorityError(f"cannot read the CA certificate {ca_certificate}: {exc}") from None
    try:
        loaded = serialization.load_pem_private_key(Path(ca_key).read_bytes(), password=None)
    except FileNotFoundError:
        raise CertificateAuthorityError(
            f"the CA key {ca_key} is missing: only the federation directory made by `fedcare federation init` "
            "can issue certificates (bring the CA key back from where it is kept offline)"
        ) from None
    except (OSError, ValueError, TypeError) as exc:
        raise CertificateAuthorityError(f"cannot read the CA key {ca_key}: {exc}") from None
    if not isinstance(loaded, ec.EllipticCurvePrivateKey) or loaded.public_key() != ca_cert.public_key():
        raise CertificateAuthorityError(f"{ca_key} is not the key of the CA certificate {ca_certificate}")
    _write_server_pair(
        Path(certificate), Path(key), ca_cert=ca_cert, ca_key=loaded, hostnames=hostnames, ips=ips, days=days
    )
    return TlsFiles(Path(ca_certificate), Path(certificate), Path(key))
