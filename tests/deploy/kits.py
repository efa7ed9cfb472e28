"""The federation folder the compose stack mounts, for the deploy test.

Layout (what docker-compose.yml expects under FEDCARE_FEDERATION):

    superlink/   ca.crt server.pem server.key superexec-secret
    server/      schema.json                      (what the ServerApp runner reads)
    budget/      admin-token
    institutions/<name>/  ca.crt node.key node.pub  (a hospital's kit)
    data/<name>/ data.csv

TODO(issue 7): once `fedcare federation init` and `fedcare institution register` exist, the test calls
them and this module keeps only the data and ownership steps.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from common.demo_data import DemoSplit
from common.tls import make_server_tls

from .docker_env import new_secret


def _write_secret(path: Path, value: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(value)


def _node_key_pair(kit: Path) -> None:
    """An OpenSSH ECDSA P-384 pair, as `ssh-keygen -t ecdsa -b 384 -N ""` makes (Flower node authentication)."""
    key = ec.generate_private_key(ec.SECP384R1())
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption())
    _write_secret(kit / "node.key", private.decode())
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    (kit / "node.pub").write_bytes(public + b"\n")


def make_federation(root: Path, *, split: DemoSplit, hospitals: list[str]) -> Path:
    tls = make_server_tls(root / "superlink", hostnames=("superlink", "localhost"), ips=("127.0.0.1",))
    _write_secret(root / "superlink" / "superexec-secret", new_secret())
    (root / "server").mkdir(parents=True)
    shutil.copy2(split.schema_path, root / "server" / "schema.json")
    _write_secret(root / "budget" / "admin-token", new_secret())
    for name, data in zip(hospitals, split.hospital_paths, strict=True):
        kit = root / "institutions" / name
        kit.mkdir(parents=True)
        shutil.copy2(tls.ca_certificate, kit / "ca.crt")
        _node_key_pair(kit)
        (root / "data" / name).mkdir(parents=True)
        shutil.copy2(data, root / "data" / name / "data.csv")
    return root


def give_to(root: Path, uid: int, gid: int) -> None:
    """Containers run as `uid`: let them read their mounts (private keys stay 0600, now theirs)."""
    for path in [root, *root.rglob("*")]:
        os.chown(path, uid, gid, follow_symlinks=False)
