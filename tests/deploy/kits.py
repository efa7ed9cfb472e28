"""The federation folder the compose stack mounts, made the way deploy/README.md says.

`fedcare federation init` (CA, SuperLink certificate with the `superlink` service name among its SANs,
budget admin token), `python -m fedcare.compose prepare` (SuperExec secret, the ServerApp's schema),
one data folder per hospital, and, once the SuperLink and the budget service run,
`fedcare institution register` for each hospital (its key to the SuperLink, the institution to the ledger).
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from common.demo_data import DemoSplit

from .docker_env import run


def fedcare(*args: str, env: dict[str, str] | None = None) -> None:
    run([sys.executable, "-m", "fedcare.cli", *args], timeout=300, env=env)


def init_federation(
    root: Path, *, split: DemoSplit, hospitals: list[str], control_address: str, budget_url: str, he: bool
) -> None:
    """Everything before the services run: TLS, tokens, HE keys, the SuperExec secret, the schema, the data folders."""
    fedcare(
        "federation",
        "init",
        str(root),
        "--san",
        "superlink",
        "--san",
        "localhost",
        "--san",
        "127.0.0.1",
        "--superlink",
        control_address,
        "--fleet-address",
        "superlink:9092",
        "--budget-url",
        budget_url,
        *(["--he"] if he else []),
    )
    run(
        [sys.executable, "-m", "fedcare.compose", "prepare", str(root), "--schema", str(split.schema_path)], timeout=120
    )
    for name, data in zip(hospitals, split.hospital_paths, strict=True):
        (root / "data" / name).mkdir(parents=True)
        shutil.copy2(data, root / "data" / name / "data.csv")


def register_institutions(
    root: Path, *, hospitals: list[str], epsilon_limit: float, delta: float, env: dict[str, str]
) -> None:
    """With the SuperLink and the budget service up: node keys to the SuperLink, institutions to the ledger."""
    for name in hospitals:
        fedcare(
            "institution",
            "register",
            name,
            "--epsilon-limit",
            str(epsilon_limit),
            "--delta",
            str(delta),
            "--federation",
            str(root),
            env=env,
        )


def give_to(root: Path, uid: int, gid: int) -> None:
    """Containers run as `uid`: let them read their mounts (private keys stay 0600, now theirs)."""
    for path in [root, *root.rglob("*")]:
        os.chown(path, uid, gid, follow_symlinks=False)
