"""Command lines for Flower's own processes as a Flower user would run them: the stock `flower-supernode`
that benchmarks time fedcare against, and the `--node-config` string both kinds of node take."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fedcare.kits import CA_FILE
from fedcare.node_keys import PRIVATE_KEY_FILE
from fedcare.processes import console_script


def node_config_arg(config: dict[str, Any]) -> str:
    """A node config as `--node-config` takes it: key=value ..., values in TOML (JSON strings are TOML)."""
    return " ".join(f"{k}={json.dumps(v)}" for k, v in config.items())


def stock_supernode_command(fleet_address: str, port: int, config: dict[str, Any], kit: Path | None) -> list[str]:
    """Flower's own `flower-supernode` line, as a hospital without fedcare's node command would run it."""
    args = [console_script("flower-supernode"), "--superlink", fleet_address, "--port", str(port)]
    args += ["--node-config", node_config_arg(config)]
    if kit is None:
        return [*args, "--insecure"]
    return [
        *args,
        "--root-certificates",
        str(kit / CA_FILE),
        "--auth-supernode-private-key",
        str(kit / PRIVATE_KEY_FILE),
    ]
