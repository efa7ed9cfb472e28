"""The federation folder and the hospitals' site folders the compose stack mounts, made the way deploy/README.md says.

`fedcare federation init` (CA, SuperLink certificate with the `superlink` service name among its SANs,
budget admin token), `python -m fedcare.compose prepare` (SuperExec secret, the ServerApp's schema),
one data folder per hospital, and, once the SuperLink and the budget service run, the hospital-made-keys
exchange for each hospital: `fedcare institution join` at its site, `fedcare institution register --request`
at the coordinator, in the coordinator project's `admin` container (its key to the SuperLink over the control
API, which is not published; the institution to the ledger), `fedcare institution install` at the site. In HE
mode then the sealed key ceremony: `fedcare he roster`, `fedcare he keygen --site` at the first hospital,
`fedcare he relay`, `fedcare he install` at the others, and `prepare` again (the relayed key-free context to
server/). Only public or sealed files cross from a site folder to the federation folder.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

from common.demo_data import DemoSplit

from .docker_env import run


def fedcare(*args: str, env: dict[str, str] | None = None) -> None:
    run([sys.executable, "-m", "fedcare.cli", *args], timeout=300, env=env)


def init_federation(
    root: Path, *, split: DemoSplit, hospitals: list[str], coordinator: str, fleet_port: int, budget_port: int
) -> None:
    """Everything before the services run: TLS, tokens, the SuperExec secret, the schema, the data folders.

    Hospitals dial `coordinator` (a name in both certificates) at the published ports; on the coordinator's
    network the ServerApp runner and the admin tools use the service names `superlink` and `budget`, and the
    budget service's healthcheck 127.0.0.1. No `--he`: a hospital makes the CKKS keys (`register_institutions`)."""
    fedcare(
        "federation",
        "init",
        str(root),
        *("--san", coordinator, "--san", "superlink"),
        *("--budget-san", coordinator, "--budget-san", "budget", "--budget-san", "127.0.0.1"),
        *("--superlink", "superlink:8000"),
        *("--fleet-address", f"{coordinator}:{fleet_port}"),
        *("--budget-url", f"https://{coordinator}:{budget_port}"),
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
    he: bool,
    env: dict[str, str],
    register_at_coordinator: Callable[[list[Path]], None],
) -> None:
    """With the SuperLink and the budget service up: each hospital joins in `sites/<name>` (its own keys) and sends
    its registration-request.json (public keys only) to `root/requests/`; the coordinator registers them all
    (`register_at_coordinator`: node keys to the SuperLink, institutions to the ledger); each hospital installs its
    kit; with `he`, the first hospital makes the CKKS key set, sealed to each of them."""
    requests = root / "requests"
    requests.mkdir(exist_ok=True)
    for name in hospitals:
        fedcare("institution", "join", name, "--out", str(sites / name), env=env)
        shutil.copy2(sites / name / "registration-request.json", requests / f"{name}.json")
    register_at_coordinator([requests / f"{name}.json" for name in hospitals])
    for name in hospitals:
        fedcare(
            "institution", "install", "--kit", str(root / "institutions" / name), "--site", str(sites / name), env=env
        )
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
