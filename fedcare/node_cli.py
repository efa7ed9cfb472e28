"""`fedcare node start`: what a hospital runs to join the federation (its SuperNode and warm executor)."""

from __future__ import annotations

import json
import os
import re
import sys
import tomllib
from pathlib import Path
from typing import Annotated, Any

import typer

from fedcare.flower_internals import SuperNodeWaits
from fedcare.kits import CA_FILE, KIT_FILE, NODE_CONFIG_FILE
from fedcare.node import RUNTIME_PORT, NodeOptions
from fedcare.node_keys import PRIVATE_KEY_FILE

_PAIR = re.compile(r"(\S+?)=('[^']*'|\"[^\"]*\"|\S+)")  # Flower's --node-config syntax: key=value ...


class NodeError(RuntimeError):
    """The node cannot start: a kit file or setting is missing or malformed."""


def parse_node_config(text: str) -> dict[str, Any]:
    """`key=value ...` as `flower-supernode --node-config` reads it (values are TOML: "text", 1.5, true)."""
    try:
        return {key: tomllib.loads(f"v = {value}")["v"] for key, value in _PAIR.findall(text)}
    except tomllib.TOMLDecodeError as exc:
        raise NodeError(f'--node-config {text!r}: {exc}; write pairs like institution="x" epsilon-limit=3.0') from exc


def options_from_kit(
    kit: Path | None,
    *,
    data: Path | None = None,
    state_dir: Path | None = None,
    superlink: str | None = None,
    node_config: str | None = None,
    **options: Any,
) -> NodeOptions:
    """The node's settings: the kit's files and node-config.toml, then the overrides given here.

    Without a kit the node runs without TLS or node authentication (debugging only), so `superlink`
    and an `institution` in `node_config` are then required.
    """
    config: dict[str, Any] = {}
    address, ca, key = superlink, None, None
    if kit is not None:
        for name in (CA_FILE, PRIVATE_KEY_FILE):
            if not (kit / name).is_file():
                raise NodeError(f"{kit / name} is missing: is {kit} a kit folder from `fedcare institution register`?")
        ca, key = kit / CA_FILE, kit / PRIVATE_KEY_FILE
        if (kit / NODE_CONFIG_FILE).is_file():
            config.update(tomllib.loads((kit / NODE_CONFIG_FILE).read_text()))
        if address is None and (kit / KIT_FILE).is_file():
            address = json.loads((kit / KIT_FILE).read_text()).get("fleet-address")
    config.update(parse_node_config(node_config or ""))
    if data is not None:
        config["data-path"] = str(Path(data).resolve())
    if state_dir is not None:
        config["state-dir"] = str(Path(state_dir).resolve())
    if not address:
        raise NodeError("no SuperLink address: give --superlink HOST:PORT (the kit's kit.json names none)")
    if "institution" not in config:
        raise NodeError("no institution: give --node-config 'institution=\"NAME\"' (a kit names it)")
    return NodeOptions(address, config, ca_certificate=ca, private_key=key, **options)


node_app = typer.Typer(help="A hospital's node.", no_args_is_help=True, add_completion=False)
_DEFAULT_WAITS = SuperNodeWaits()


@node_app.command()
def start(
    kit: Annotated[
        Path | None, typer.Option(help="The kit folder from `fedcare institution register` (CA, node key, config).")
    ] = None,
    data: Annotated[
        Path | None,
        typer.Option(
            help="This hospital's data: a CSV or Parquet file, or an image task's class folders (default: the kit's)."
        ),
    ] = None,
    state_dir: Annotated[
        Path | None, typer.Option(help="Where the privacy accountant lives (default: the kit's state folder).")
    ] = None,
    superlink: Annotated[
        str | None, typer.Option(help="The SuperLink's Fleet API, HOST:PORT (default: the kit's kit.json).")
    ] = None,
    node_config: Annotated[
        str | None, typer.Option(help="Settings over the kit's node-config.toml: 'key=\"value\" key2=1.5'.")
    ] = None,
    runtime_port: Annotated[
        int, typer.Option(help="The SuperNode's runtime API port on 127.0.0.1 (one per node on a host).")
    ] = RUNTIME_PORT,
    fleet_poll: Annotated[
        float, typer.Option(min=0.001, help="Seconds between the SuperNode's polls of the SuperLink during runs.")
    ] = _DEFAULT_WAITS.fleet_poll,
    fleet_poll_idle: Annotated[
        float, typer.Option(min=0.001, help="... and when no message came for --busy-window seconds.")
    ] = _DEFAULT_WAITS.fleet_poll_idle,
    busy_window: Annotated[float, typer.Option(min=0.0, help="Seconds after a message that count as busy.")] = (
        _DEFAULT_WAITS.busy_window
    ),
    heartbeat_interval: Annotated[
        float,
        typer.Option(
            min=10.0, help="Seconds between heartbeats; the SuperLink counts the node dead after 2 missed (>= 10)."
        ),
    ] = _DEFAULT_WAITS.heartbeat_interval,
    reply_wait: Annotated[
        float, typer.Option(min=0.001, help="Seconds between the SuperNode's checks for the ClientApp's reply.")
    ] = _DEFAULT_WAITS.reply_wait,
    executor_poll: Annotated[
        float, typer.Option(min=0.001, help="Seconds between the executor's task claims when the SuperNode is silent.")
    ] = 0.5,
    message_timeout: Annotated[
        float, typer.Option(min=0.1, help="Seconds one message may take before its ClientApp is killed.")
    ] = 300.0,
    torch_threads: Annotated[
        int, typer.Option(min=0, help="torch threads per message (0: torch's default; 1 suits small models).")
    ] = 1,
    insecure: Annotated[
        bool, typer.Option("--insecure", help="No kit: no TLS, no node authentication. For debugging only.")
    ] = False,
) -> None:
    """Start this hospital's SuperNode and warm ClientApp executor; Ctrl-C or SIGTERM stops both.

    Exits with code 77, naming the revocation, when the SuperLink refuses the node's key for good.
    """
    if kit is None and not insecure:
        raise typer.BadParameter("give --kit KIT (or --insecure for a debugging federation without TLS)")
    try:
        options = options_from_kit(
            None if insecure else kit,
            data=data,
            state_dir=state_dir,
            superlink=superlink,
            node_config=node_config,
            runtime_port=runtime_port,
            waits=SuperNodeWaits(
                fleet_poll=fleet_poll,
                fleet_poll_idle=fleet_poll_idle,
                busy_window=busy_window,
                reply_wait=reply_wait,
                heartbeat_interval=heartbeat_interval,
            ),
            executor_poll=executor_poll,
            message_timeout=message_timeout,
            torch_threads=torch_threads,
        )
    except NodeError as exc:
        typer.echo(f"fedcare node start: {exc}", err=True)
        raise typer.Exit(2) from exc
    # Exec (same pid, for supervisors): the node's long-lived process then holds only fedcare.node.
    os.execv(sys.executable, [sys.executable, "-m", "fedcare.node", options.to_json()])
