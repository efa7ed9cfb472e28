"""The federation folder the compose stack mounts, for the deploy test.

Layout (what docker-compose.yml expects under FEDCARE_FEDERATION; `fedcare federation init` makes the same):

    superlink/   ca.crt server.pem server.key superexec-secret
    server/      schema.json                      (what the ServerApp runner reads)
    budget/      admin-token
    institutions/<slug>/  ca.crt node.key node.pub ...  (a hospital's kit)
    data/<slug>/ data.csv

With the registration commands (issue 7) present, the test makes it the way deploy/README.md says:
`fedcare federation init`, `python -m fedcare.compose prepare`, and `fedcare institution register` once
the SuperLink and the budget service run. Without them it falls back to making the same files itself.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from common.demo_data import DemoSplit
from common.tls import make_server_tls
from fedcare.compose import prepare_federation

from .docker_env import new_secret, run


def fedcare_cli() -> list[str]:
    return [sys.executable, "-m", "fedcare.cli"]


def have_registration_commands() -> bool:
    """True once `fedcare federation` and `fedcare institution` exist (issue 7)."""
    done = subprocess.run([*fedcare_cli(), "institution", "register", "--help"], capture_output=True, text=True,
                          timeout=120, stdin=subprocess.DEVNULL)
    return done.returncode == 0


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


def init_federation(root: Path, *, split: DemoSplit, hospitals: list[str], control_address: str, budget_url: str,
                    use_cli: bool) -> None:
    """Everything before the services run: TLS, tokens, the SuperExec secret, the schema, the data folders."""
    if use_cli:
        run([*fedcare_cli(), "federation", "init", str(root), "--san", "superlink", "--san", "localhost", "--san", "127.0.0.1",
             "--superlink", control_address, "--fleet-address", "superlink:9092", "--budget-url", budget_url], timeout=300)
    else:
        tls = make_server_tls(root / "superlink", hostnames=("superlink", "localhost"), ips=("127.0.0.1",))
        _write_secret(root / "budget" / "admin-token", new_secret())
        for name in hospitals:  # the kits `fedcare institution register` would issue
            kit = root / "institutions" / name
            kit.mkdir(parents=True)
            shutil.copy2(tls.ca_certificate, kit / "ca.crt")
            _node_key_pair(kit)
    prepare_federation(root, schema=split.schema_path)
    for name, data in zip(hospitals, split.hospital_paths, strict=True):
        (root / "data" / name).mkdir(parents=True)
        shutil.copy2(data, root / "data" / name / "data.csv")


def register_institutions(root: Path, *, hospitals: list[str], epsilon_limit: float, delta: float, use_cli: bool,
                          env: dict[str, str]) -> None:
    """With the SuperLink and the budget service up: node keys to the SuperLink, institutions to the ledger."""
    if use_cli:
        for name in hospitals:
            run([*fedcare_cli(), "institution", "register", name, "--epsilon-limit", str(epsilon_limit),
                 "--delta", str(delta), "--federation", str(root)], timeout=300, env=env)
        return
    from server.budget_client import BudgetClient
    import tomli_w

    config = tomli_w.dumps({"superlink": {"default": "fedcare", "fedcare": {
        "address": env["FEDCARE_TEST_CONTROL_ADDRESS"], "root-certificates": str(root / "superlink" / "ca.crt")}}})
    home = root.parent / "flwr-home"
    home.mkdir(exist_ok=True)
    (home / "config.toml").write_text(config)
    flwr = Path(sys.executable).with_name("flwr")
    for name in hospitals:
        run([str(flwr) if flwr.exists() else "flwr", "supernode", "register", str(root / "institutions" / name / "node.pub"),
             "fedcare", "--name", name, "--format", "json"], env={**env, "FLWR_HOME": str(home)}, timeout=120)
    with BudgetClient(env["FEDCARE_TEST_BUDGET_URL"], (root / "budget" / "admin-token").read_text().strip()) as admin:
        for name in hospitals:
            admin.ensure_institution(name, epsilon_limit, delta)


def give_to(root: Path, uid: int, gid: int) -> None:
    """Containers run as `uid`: let them read their mounts (private keys stay 0600, now theirs)."""
    for path in [root, *root.rglob("*")]:
        os.chown(path, uid, gid, follow_symlinks=False)
