"""The SuperLink's node list, through Flower's own CLI (`flwr supernode register/unregister/list`).

We call the `flwr` CLI rather than Flower's internal HTTP client, so a
coordinator can repeat by hand exactly what fedcare did (FIELD-NOTES: TLS and
node authentication).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomli_w

CONNECTION = "fedcare"
UNREACHABLE_MARKERS = ("unavailable", "failed to connect", "connection refused", "deadline exceeded", "timed out")


class SuperLinkError(RuntimeError):
    """The SuperLink answered, and refused (bad key, unknown node id, ...)."""


class SuperLinkUnavailable(SuperLinkError):
    """The SuperLink could not be reached: the registration stays pending."""


@dataclass(frozen=True)
class SuperLinkConnection:
    """Where the SuperLink's control API listens and the CA that signed its certificate."""

    address: str
    root_certificates: Path | None  # None: insecure (debugging only)
    command_prefix: tuple[str, ...] = ()  # where the `flwr` CLI runs to reach `address` (fedcare.placement)


def flwr_bin() -> str:
    candidate = Path(sys.executable).with_name("flwr")
    return str(candidate) if candidate.exists() else "flwr"


def write_connection_config(home: Path, *, address: str, root_certificates: Path | None) -> None:
    """The `flwr` CLI's connection file in FLWR_HOME `home`: the `fedcare` connection to `address`, over TLS
    checked against `root_certificates` (None: insecure).

    Whole or not at all: `sync` runs several commands at once, and a reader must not see a half-written file."""
    entry: dict[str, Any] = {"address": address}
    if root_certificates is None:
        entry["insecure"] = True
    else:
        entry["root-certificates"] = str(root_certificates)
    home.mkdir(parents=True, exist_ok=True)
    part = home / f"config.toml.{os.getpid()}.{threading.get_ident()}.part"
    part.write_text(tomli_w.dumps({"superlink": {"default": CONNECTION, CONNECTION: entry}}))
    os.replace(part, home / "config.toml")


class SuperLinkControl:
    def __init__(self, connection: SuperLinkConnection, *, home: Path, timeout: float = 60.0) -> None:
        self.connection, self.home, self.timeout = connection, Path(home), timeout

    def run(self, *args: str) -> dict[str, Any]:
        """One `flwr` command with `--format json`; its answer, or SuperLinkError/SuperLinkUnavailable."""
        certificates = self.connection.root_certificates
        write_connection_config(
            self.home,
            address=self.connection.address,
            root_certificates=None if certificates is None else Path(certificates).resolve(),
        )
        env = {
            **os.environ,
            "FLWR_HOME": str(self.home),
            "FLWR_TELEMETRY_ENABLED": "0",
            "FLWR_DISABLE_UPDATE_CHECK": "1",
        }
        try:
            done = subprocess.run(
                [*self.connection.command_prefix, flwr_bin(), *args, "--format", "json"],
                capture_output=True,
                text=True,
                timeout=self.timeout,
                env=env,
            )
        except subprocess.TimeoutExpired:
            raise SuperLinkUnavailable(f"`flwr {' '.join(args)}` got no answer within {self.timeout:.0f} s") from None
        try:
            answer = json.loads(done.stdout[done.stdout.index("{") :])
        except ValueError:
            text = (done.stdout + done.stderr).strip()
            raise SuperLinkError(
                f"`flwr {' '.join(args)}` gave no JSON (exit {done.returncode}): {text[-500:]}"
            ) from None
        if not answer.get("success", False):
            message = str(answer.get("error-message", answer)).strip()
            kind = SuperLinkUnavailable if any(m in message.lower() for m in UNREACHABLE_MARKERS) else SuperLinkError
            raise kind(f"SuperLink {self.connection.address}: {message.splitlines()[-1] if message else answer}")
        return answer

    def register(self, public_key: Path, *, name: str) -> int:
        """Register a node's public key; returns the node id the SuperLink gave it."""
        return int(self.run("supernode", "register", str(public_key), CONNECTION, "--name", name)["node-id"])

    def unregister(self, node_id: int) -> None:
        """Remove a node: the SuperLink forgets its key, and the SuperNode can no longer connect."""
        try:
            self.run("supernode", "unregister", str(node_id), CONNECTION)
        except SuperLinkUnavailable:
            raise
        except SuperLinkError as exc:
            if "not found" not in str(exc).lower():
                raise  # an id the SuperLink no longer knows is already what we want

    def nodes(self) -> list[dict[str, Any]]:
        return list(self.run("supernode", "list", CONNECTION).get("nodes", []))
