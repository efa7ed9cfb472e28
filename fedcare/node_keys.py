"""A SuperNode's identity for Flower node authentication: an ECDSA P-384 key pair in OpenSSH format.

Equivalent to `ssh-keygen -t ecdsa -b 384 -N ""`, made with `cryptography` so no
OpenSSH install is needed. The SuperLink knows only the public key (registered
with `flwr supernode register`); the private key never leaves the hospital's kit.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from common.private_files import write_private

PRIVATE_KEY_FILE = "node.key"
PUBLIC_KEY_FILE = "node.pub"


@dataclass(frozen=True)
class NodeKeys:
    private_key: Path
    public_key: Path
    fingerprint: str  # SHA256:... as `ssh-keygen -lf` prints it


def fingerprint(public_openssh: bytes) -> str:
    """The OpenSSH SHA-256 fingerprint of a public key line (`ecdsa-sha2-nistp384 AAAA... comment`)."""
    blob = base64.b64decode(public_openssh.split()[1])
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def make_node_keys(out_dir: Path, *, comment: str) -> NodeKeys:
    """Write `node.key` (0600) and `node.pub` in `out_dir`, replacing any earlier pair."""
    key = ec.generate_private_key(ec.SECP384R1())
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    )
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    public_line = public + b" " + comment.encode() + b"\n"
    keys = NodeKeys(out_dir / PRIVATE_KEY_FILE, out_dir / PUBLIC_KEY_FILE, fingerprint(public))
    write_private(keys.private_key, private)
    keys.public_key.write_bytes(public_line)
    keys.public_key.chmod(0o644)
    return keys


def read_fingerprint(public_key: Path) -> str:
    return fingerprint(Path(public_key).read_bytes())
