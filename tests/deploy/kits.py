"""The federation folder and the hospitals' site folders the compose stack mounts, made the way deploy/README.md says.

`fedcare federation init` (CA, SuperLink certificate with the `superlink` service name among its SANs,
budget admin token), `python -m fedcare.compose prepare` (SuperExec secret, the ServerApp's schema),
one data folder per hospital, and, once the SuperLink and the budget service run, the hospital-made-keys
exchange for each hospital: `fedcare institution join` at its site, `fedcare institution register --request`
at the coordinator (its key to the SuperLink, the institution to the ledger), `fedcare institution install`
at the site. In HE mode then the sealed key ceremony: `fedcare he roster`, `fedcare he keygen --site` at the
first hospital, `fedcare he relay`, `fedcare he install` at the others, and `prepare` again (the relayed
key-free context to server/). Only public or sealed files cross from a site folder to the federation folder.
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
    root: Path, *, split: DemoSplit, hospitals: list[str], control_address: str, budget_url: str
) -> None:
    """Everything before the services run: TLS, tokens, the SuperExec secret, the schema, the data folders.
    No `--he`: the coordinator makes no CKKS key (a hospital does, in `register_institutions`)."""
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
    )
    run(
        [sys.executable, "-m", "fedcare.compose", "prepare", str(root), "--schema", str(split.schema_path)], timeout=120
    )
    for name, data in zip(hospitals, split.hospital_paths, strict=True):
        (root / "data" / name).mkdir(parents=True)
        shutil.copy2(data, root / "data" / name / "data.csv")


def register_institutions(
    root: Path,
    sites: Path,
    *,
    hospitals: list[str],
    epsilon_limit: float,
    delta: float,
    he: bool,
    env: dict[str, str],
) -> None:
    """With the SuperLink and the budget service up: each hospital joins in `sites/<name>` (its own keys), the
    coordinator registers its request (node key to the SuperLink, institution to the ledger), the hospital
    installs the kit; with `he`, the first hospital makes the CKKS key set, sealed to each of them."""
    for name in hospitals:
        site = sites / name
        fedcare("institution", "join", name, "--out", str(site), env=env)
        fedcare(
            "institution",
            "register",
            "--request",
            str(site / "registration-request.json"),
            "--epsilon-limit",
            str(epsilon_limit),
            "--delta",
            str(delta),
            "--federation",
            str(root),
            env=env,
        )
        fedcare("institution", "install", "--kit", str(root / "institutions" / name), "--site", str(site), env=env)
    if he:
        maker, *others = hospitals
        bundle = sites / "he-bundle"  # from the key-making hospital to the coordinator: nothing secret in it
        fedcare("he", "roster", "--federation", str(root), env=env)
        roster = root / "he" / "roster.json"
        fedcare("he", "keygen", "--site", str(sites / maker), "--roster", str(roster), "--bundle", str(bundle), env=env)
        fedcare("he", "relay", "--bundle", str(bundle), "--federation", str(root), env=env)
        for name in others:
            fedcare("he", "install", "--kit", str(root / "institutions" / name), "--site", str(sites / name), env=env)
        run([sys.executable, "-m", "fedcare.compose", "prepare", str(root)], timeout=120)  # he-public.ctx to server/


def give_to(root: Path, uid: int, gid: int) -> None:
    """Containers run as `uid`: let them read their mounts (private keys stay 0600, now theirs)."""
    for path in [root, *root.rglob("*")]:
        os.chown(path, uid, gid, follow_symlinks=False)
