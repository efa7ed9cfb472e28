"""A hospital's kit: the one folder it needs to join the federation, and nothing more.

```
node.key          the SuperNode's private key (0600), OpenSSH ECDSA P-384: proves to the SuperLink who connects
node.pub          its public key, registered with the SuperLink
ca.crt            the federation CA: the SuperNode trusts only a SuperLink certificate it signed
he-secret.ctx     (HE federations) the hospitals' CKKS secret context (0600), he-params.json beside it
budget-token      (with a budget service) this institution's bearer token (0600): reads its own budget only
node-config.toml  the SuperNode's --node-config (institution, data path, state dir, epsilon limit, HE context)
kit.json          what was issued, for whom, and where to connect (no secrets)
README.md         how to start the node (`fedcare node start --kit`), by hand or with docker compose
```
No other hospital's key or token and no server key ever goes in (tests check the files).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import tomli_w

from common.private_files import make_private_dir, write_private
from fedcare.federation_dir import FederationConfig, FederationDir
from fedcare.node_keys import NodeKeys, make_node_keys
from fedcare.registry import now

CA_FILE, NODE_CONFIG_FILE, TOKEN_FILE, HE_CONTEXT_FILE, HE_PARAMS_FILE = (
    "ca.crt",
    "node-config.toml",
    "budget-token",
    "he-secret.ctx",
    "he-params.json",
)
KIT_FILE, README_FILE = "kit.json", "README.md"


@dataclass(frozen=True)
class KitOptions:
    name: str
    epsilon_limit: float
    delta: float
    data_path: str | None = None  # as the hospital sees it; default <kit-root>/data.csv
    kit_root: str | None = None  # where the kit will live at the hospital (e.g. /kit in a container); default: here
    node_config: str | None = None  # a whole --node-config string instead of the generated TOML


def write_kit(fed: FederationDir, options: KitOptions, *, config: FederationConfig) -> tuple[Path, NodeKeys]:
    """Create (or, on rotation, refresh) the kit folder; returns it and the new node keys."""
    kit = make_private_dir(fed.kit_dir(options.name))
    keys = make_node_keys(kit, comment=f"fedcare-{kit.name}")
    shutil.copyfile(fed.ca_certificate, kit / CA_FILE)
    root = options.kit_root or str(kit)
    if config.he:
        from common.he import KeyFiles

        he = KeyFiles.at(fed.he_dir)
        write_private(kit / HE_CONTEXT_FILE, he.hospital_context.read_bytes())
        shutil.copyfile(he.hospital_params, kit / HE_PARAMS_FILE)
    (kit / NODE_CONFIG_FILE).write_text(node_config_toml(options, root=root, he=config.he))
    info = {
        "institution": options.name,
        "slug": kit.name,
        "issued-at": now(),
        "fleet-address": config.fleet_address,
        "budget-url": config.budget_url,
        "node-key-fingerprint": keys.fingerprint,
        "he": config.he,
        "node-config": options.node_config or f"{root}/{NODE_CONFIG_FILE}",
    }
    (kit / KIT_FILE).write_text(json.dumps(info, indent=2) + "\n")
    (kit / README_FILE).write_text(
        readme(options.name, slug=kit.name, root=root, config=config, node_config=options.node_config)
    )
    return kit, keys


def node_config_toml(options: KitOptions, *, root: str, he: bool) -> str:
    if options.node_config:  # the coordinator gave the whole string; keep a TOML note of it
        return f"# --node-config given at registration:\n# {options.node_config}\n"
    config: dict[str, object] = {
        "institution": options.name,
        "data-path": options.data_path or f"{root}/data.csv",
        "state-dir": f"{root}/state",
        "epsilon-limit": options.epsilon_limit,
    }
    if he:
        config["he-context"] = f"{root}/{HE_CONTEXT_FILE}"
    return tomli_w.dumps(config)


def write_budget_token(kit: Path, token: str) -> Path:
    return write_private(kit / TOKEN_FILE, token + "\n")


def readme(name: str, *, slug: str, root: str, config: FederationConfig, node_config: str | None) -> str:
    node_config_arg = f"'{node_config}'" if node_config else f"{root}/{NODE_CONFIG_FILE}"
    node_config_opt = f" \\\n  --node-config {node_config_arg}" if node_config else ""
    budget = (
        f"- `budget-token`: your institution's token for the budget service at {config.budget_url}; it reads only "
        f'your own budget: `fedcare budget show --url {config.budget_url} --token "$(cat budget-token)"`.\n'
        if config.budget_url
        else ""
    )
    he = (
        "- `he-secret.ctx`: the federation's CKKS secret context. It can decrypt every update: keep it here only.\n"
        if config.he
        else ""
    )
    return f"""# fedcare kit for {name}

This folder is everything {name} needs to join the federation. Keep it private: `node.key`
{"and `he-secret.ctx` " if config.he else ""}must never leave this site (mode 0600).

- `node.key` / `node.pub`: your SuperNode's identity. The SuperLink admits only registered keys.
- `ca.crt`: the federation's CA; your SuperNode talks only to a SuperLink it certified (TLS).
{budget}{he}- `node-config.toml`: your settings (data file, privacy state directory, epsilon limit). Edit
  `data-path` to point at your CSV or Parquet file (default: `{root}/data.csv`).

## Start the node by hand

```bash
pip install fedcare   # the same version as the coordinator
fedcare node start --kit {root} --superlink {config.fleet_address}{node_config_opt}
```

It runs your SuperNode and fedcare's warm ClientApp executor together; Ctrl-C or SIGTERM stops both.
`--data FILE` and `--state-dir DIR` override `node-config.toml`. Flower's SuperNode alone works too,
several seconds slower per message (a fresh ClientApp process each time):

```bash
FLWR_TELEMETRY_ENABLED=0 flower-supernode --superlink {config.fleet_address} \\
  --root-certificates {root}/{CA_FILE} --auth-supernode-private-key {root}/node.key \\
  --node-config {node_config_arg}
```

## Start it with docker compose

Mount this folder read-only at the path `node-config.toml` names (`{root}`), and your data beside it,
then run the same command in the fedcare image. See the federation's deploy notes
(`deploy/` in the fedcare repository) for the compose service.

If the SuperLink says `[code: 2004] Failed to activate SuperNode`, your key is not (or no longer)
registered: ask the coordinator to run `fedcare federation sync`, or to re-issue your kit.
"""
