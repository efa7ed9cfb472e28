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

A kit issued for a registration request (the hospital made its own keys, `fedcare institution join`)
holds no private key at all: `node.pub` and `sealing.pub` from the request, the CA, kit.json, the node
config, and the budget token sealed to the hospital (`budget-token.sealed`). The hospital installs it
into its site directory (`fedcare institution install`), which then has the layout above.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import tomli_w

from common.private_files import make_private_dir, write_private
from fedcare.federation_dir import FederationConfig, FederationDir
from fedcare.node_keys import PRIVATE_KEY_FILE, PUBLIC_KEY_FILE, make_node_keys
from fedcare.registration_request import RegistrationRequest
from fedcare.registry import now
from fedcare.sealing import SEALING_PUBLIC_KEY_FILE, seal

CA_FILE, NODE_CONFIG_FILE, TOKEN_FILE, HE_CONTEXT_FILE, HE_PARAMS_FILE = (
    "ca.crt",
    "node-config.toml",
    "budget-token",
    "he-secret.ctx",
    "he-params.json",
)
KIT_FILE, README_FILE = "kit.json", "README.md"
SEALED_TOKEN_FILE = "budget-token.sealed"  # the budget token, sealed to the hospital's sealing key
SEALED_HE_SECRET_FILE = "he-secret.sealed"  # the CKKS secret context, sealed to the hospital (relayed key set)
# The node-config key naming the hospital's CKKS secret context, and the run-config key naming the
# server's key-free one: declared once here (they are about to be renamed he-secret-context/he-public-context).
NODE_HE_CONTEXT_KEY = "he-secret-context"
RUN_HE_CONTEXT_KEY = "he-public-context"


@dataclass(frozen=True)
class KitOptions:
    name: str
    epsilon_limit: float
    delta: float
    data_path: str | None = None  # as the hospital sees it; default <kit-root>/data.csv
    kit_root: str | None = None  # where the kit will live at the hospital (e.g. /kit in a container); default: here
    node_config: str | None = None  # a whole --node-config string instead of the generated TOML


def write_kit(
    fed: FederationDir, options: KitOptions, *, config: FederationConfig, request: RegistrationRequest | None = None
) -> tuple[Path, str]:
    """Create (or, on rotation, refresh) the kit folder; returns it and the node key's fingerprint.

    With a `request` the hospital made its keys: the kit gets their public halves and no secret. Without,
    the coordinator makes the node key pair here (the one-step path: the coordinator has seen the key).
    """
    kit = make_private_dir(fed.kit_dir(options.name))
    if request is None:
        node_key_fingerprint = make_node_keys(kit, comment=f"fedcare-{kit.name}").fingerprint
    else:
        # From an earlier one-step kit, or sealed to keys this request replaces.
        for stale in (PRIVATE_KEY_FILE, HE_CONTEXT_FILE, TOKEN_FILE, SEALED_HE_SECRET_FILE, HE_PARAMS_FILE):
            (kit / stale).unlink(missing_ok=True)
        _write_public(kit / PUBLIC_KEY_FILE, request.node_public_key + "\n")
        _write_public(kit / SEALING_PUBLIC_KEY_FILE, request.sealing_public_key + "\n")
        node_key_fingerprint = request.node_key_fingerprint
    shutil.copyfile(fed.ca_certificate, kit / CA_FILE)
    root = options.kit_root or str(kit)
    he_secret = config.he and request is None  # a coordinator-made CKKS secret only goes into one-step kits
    if he_secret:
        from common.he.keys import KeyFiles

        he = KeyFiles.at(fed.he_dir)
        write_private(kit / HE_CONTEXT_FILE, he.hospital_context.read_bytes())
        shutil.copyfile(he.hospital_params, kit / HE_PARAMS_FILE)
    (kit / NODE_CONFIG_FILE).write_text(node_config_toml(options, root=root, he=he_secret))
    info = {
        "institution": options.name,
        "slug": kit.name,
        "issued-at": now(),
        "fleet-address": config.fleet_address,
        "budget-url": config.budget_url,
        "node-key-fingerprint": node_key_fingerprint,
        "keys-made-by": "coordinator" if request is None else "institution",
        "he": config.he,
        "kit-root": root,
        "node-config": options.node_config or f"{root}/{NODE_CONFIG_FILE}",
    }
    (kit / KIT_FILE).write_text(json.dumps(info, indent=2) + "\n")
    text = readme(options.name, slug=kit.name, root=root, config=config, node_config=options.node_config)
    (kit / README_FILE).write_text(text if request is None else request_readme(options.name, kit=kit))
    return kit, node_key_fingerprint


def _write_public(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(0o644)


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
        config[NODE_HE_CONTEXT_KEY] = f"{root}/{HE_CONTEXT_FILE}"
    return tomli_w.dumps(config)


def write_budget_token(kit: Path, token: str, *, sealing_public_key: str | None = None) -> Path:
    """The institution's budget token in its kit: sealed to its sealing key when it has one, so the kit
    can travel over any channel; in clear (0600) for a one-step kit, which is secret as a whole anyway."""
    if sealing_public_key is None:
        return write_private(kit / TOKEN_FILE, token + "\n")
    path = kit / SEALED_TOKEN_FILE
    path.write_bytes(seal(token.encode(), public_b64=sealing_public_key))
    path.chmod(0o644)
    return path


def request_readme(name: str, *, kit: Path) -> str:
    return f"""# fedcare kit for {name}

Made for the node key and sealing key {name} generated itself (`fedcare institution join`). It holds
no private key: `node.pub` and `sealing.pub` are yours, `ca.crt` is the federation's CA, and
`budget-token.sealed` opens only with your `sealing.key`. Install it into your site directory:

```bash
fedcare institution install --kit {kit.name} --site SITE_DIR
```

That checks the kit was made for your node key, unseals the budget token and writes the node config
with paths in SITE_DIR. Then start the SuperNode from SITE_DIR as its README says.
"""


def readme(name: str, *, slug: str, root: str, config: FederationConfig, node_config: str | None) -> str:
    node_config_arg = f"'{node_config}'" if node_config else f"{root}/{NODE_CONFIG_FILE}"
    node_config_opt = f" \\\n  --node-config {node_config_arg}" if node_config else ""
    budget = (
        f"- `budget-token`: your institution's token (0600) for the budget service at {config.budget_url}; it "
        f"reads only your own budget: `fedcare budget show --kit {root}` (the URL and `ca.crt` come from here "
        f"too), or sign in at {config.budget_url}/dashboard/login with it.\n"
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

If `fedcare node start` stops with exit code 77 (`[code: 2004] Failed to activate SuperNode`, or REVOKED),
your key is not (or no longer) registered: ask the coordinator to run `fedcare federation sync`, or to
re-issue your kit.
"""
