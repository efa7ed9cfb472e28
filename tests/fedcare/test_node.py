"""`fedcare node start`'s settings: a kit's files and node config, then the hospital's overrides (no processes)."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest
import tomli_w

from fedcare.fast_supernode import NODE_REFUSED_EXIT, parse, refusal_message
from fedcare.flower_internals import Refusal, SuperNodeWaits
from fedcare.node import NodeOptions
from fedcare.node_cli import NodeError, options_from_kit, parse_node_config


def _kit(tmp_path: Path) -> Path:
    kit = tmp_path / "kit"
    kit.mkdir()
    for name in ("ca.crt", "node.key"):
        (kit / name).write_text("x")
    (kit / "node-config.toml").write_text(
        tomli_w.dumps({"institution": "St Mary", "data-path": "/kit/data.csv", "state-dir": "/kit/state"})
    )
    (kit / "kit.json").write_text(json.dumps({"fleet-address": "superlink.example.org:9092"}))
    return kit


def test_the_kit_gives_address_keys_and_config_and_the_hospital_overrides_them(tmp_path: Path) -> None:
    kit = _kit(tmp_path)
    options = options_from_kit(
        kit, data=tmp_path / "ours.csv", node_config='epsilon-limit=4.5 institution="St Mary\'s"', runtime_port=9111
    )
    assert options.superlink == "superlink.example.org:9092"
    assert options.node_config == {
        "institution": "St Mary's",
        "data-path": str((tmp_path / "ours.csv").resolve()),
        "state-dir": "/kit/state",
        "epsilon-limit": 4.5,
    }
    command = options.supernode_command()
    assert command[command.index("--isolation") + 1] == "process"  # the warm executor serves its tasks
    assert command[command.index("--root-certificates") + 1] == str(kit / "ca.crt")
    assert command[command.index("--auth-supernode-private-key") + 1] == str(kit / "node.key")
    assert command[command.index("--port") + 1] == "9111" and "--insecure" not in command
    pairs = command[command.index("--node-config") + 1]
    assert parse_node_config(pairs) == options.node_config  # Flower reads back what the kit and overrides say
    assert "--runtime-address" in options.executor_command() and "127.0.0.1:9111" in options.executor_command()
    assert "--parquet" not in options.executor_command()  # a CSV: the executor leaves pyarrow out (warm_state)
    parquet = options_from_kit(kit, data=tmp_path / "ours.PQ")
    assert "--parquet" in parquet.executor_command()


def test_options_survive_the_exec_into_the_supervisor(tmp_path: Path) -> None:
    options = options_from_kit(_kit(tmp_path), waits=SuperNodeWaits(fleet_poll=0.2), message_timeout=9.0)
    assert NodeOptions.from_json(options.to_json()) == options
    assert shlex.join(options.supernode_command())  # a command line a person can read in the log


def test_missing_pieces_are_named(tmp_path: Path) -> None:
    kit = _kit(tmp_path)
    (kit / "node.key").unlink()
    with pytest.raises(NodeError, match="node.key is missing"):
        options_from_kit(kit)
    with pytest.raises(NodeError, match="no SuperLink address"):
        options_from_kit(None, node_config='institution="x"')
    with pytest.raises(NodeError, match="no institution"):
        options_from_kit(None, superlink="127.0.0.1:9092")
    insecure = options_from_kit(None, superlink="127.0.0.1:9092", node_config='institution="x"')
    assert "--insecure" in insecure.supernode_command()


def test_the_heartbeat_interval_reaches_the_supernode_and_a_refusal_names_the_revocation(tmp_path: Path) -> None:
    options = options_from_kit(_kit(tmp_path), waits=SuperNodeWaits(heartbeat_interval=15.0))
    command = options.supernode_command()
    waits, _, flower_args = parse(command[command.index("fedcare.fast_supernode") + 1 :])
    assert waits == options.waits and waits.heartbeat_interval == 15.0 and "--superlink" in flower_args

    revoked = refusal_message(Refusal(revoked=True, flower_error="UNAUTHENTICATED: Invalid node ID"))
    assert "REVOKED" in revoked and f"exit code {NODE_REFUSED_EXIT}" in revoked and "Invalid node ID" in revoked
    refused = refusal_message(
        Refusal(revoked=False, flower_error="[code: 2004] Failed to activate SuperNode.", seconds=25)
    )
    assert "REVOKED" in refused and "25 s" in refused and "[code: 2004] Failed to activate SuperNode" in refused
