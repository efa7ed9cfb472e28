"""`fedcare he roster | relay | install`: the CKKS key ceremony, command by command.

coordinator: `fedcare he roster`    writes DIR/he/roster.json (public: who, and their sealing keys)
hospital:    `fedcare he keygen --site SITE --roster roster.json --bundle OUT`   (in he_cli)
coordinator: `fedcare he relay --bundle OUT`   key-free context to DIR/he/server/, blobs to each kit
hospital:    `fedcare he install --kit KIT --site SITE`   unseals its copy into SITE/he-secret.ctx
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from fedcare.federation_dir import FederationDir, FederationDirError

console = Console()
errors = Console(stderr=True)
FederationOption = Annotated[Path, typer.Option("--federation", "-f", help="The federation directory (default: here).")]


def _fail(message: str) -> typer.Exit:
    errors.print(f"[red]{message}[/]")
    return typer.Exit(2)


def make_key_set_at_site(site: Path, *, roster: Path, bundle: Path, params: object) -> None:
    from common.he.keys import HEKeyError
    from common.he.params import HEConfigError
    from fedcare.he_ceremony import CeremonyError, make_key_set
    from fedcare.roster import RosterError, read_roster
    from fedcare.site import SiteDir, SiteError

    try:
        made = make_key_set(SiteDir(site.resolve()), read_roster(roster), bundle=bundle, params=params)  # type: ignore[arg-type]
    except (CeremonyError, RosterError, SiteError, HEConfigError, HEKeyError) as exc:
        raise _fail(f"no key set made: {exc}") from None
    console.print(f"key set [bold]{made.key_id}[/] made; its secret context is in {site}/he-secret.ctx (0600)")
    console.print(f"  sealed for: {', '.join(made.recipients)} (roster {made.roster_id})")
    console.print(
        f"Send {made.directory} to the coordinator (nothing in it is secret), and tell every hospital the key id "
        f"{made.key_id} over another channel: they check it when they install."
    )


def roster(federation: FederationOption = Path(".")) -> None:
    """Coordinator: publish who receives the CKKS secret (active institutions and their sealing public keys)."""
    from fedcare.roster import RosterError, write_roster

    try:
        path, made = write_roster(FederationDir(federation.resolve()))
    except (RosterError, FederationDirError) as exc:
        raise _fail(f"no roster written: {exc}") from None
    console.print(f"roster {made.roster_id} written to {path} (public): {', '.join(made.slugs)}")
    if made.skipped:
        errors.print(
            f"[yellow]not in the roster (registered with coordinator-made keys, no sealing key):[/] "
            f"{', '.join(made.skipped)}; re-register them by request to include them"
        )
    console.print("Send it to the hospital that makes the key set: `fedcare he keygen --site SITE --roster ...`.")


def relay(
    bundle: Annotated[Path, typer.Option(help="The folder the key-making hospital sent.")],
    federation: FederationOption = Path("."),
) -> None:
    """Coordinator: relay a hospital-made key set: the key-free context to the ServerApp, sealed blobs to kits."""
    from common.he.keys import HEKeyError
    from fedcare.he_ceremony import CeremonyError
    from fedcare.he_relay import RelayError, relay_key_set
    from fedcare.kits import RUN_HE_CONTEXT_KEY

    try:
        report = relay_key_set(FederationDir(federation.resolve()), bundle)
    except (RelayError, CeremonyError, HEKeyError, FederationDirError) as exc:
        raise _fail(f"not relayed: {exc}") from None
    console.print(f"key set [bold]{report.key_id}[/]: run config {RUN_HE_CONTEXT_KEY} = {report.server_context}")
    for name, blob in report.delivered.items():
        console.print(f"  [green]sealed for {name}[/] {blob} (send it with the kit)")
    for name in report.withdrawn:
        console.print(f"  [yellow]withdrawn[/] the old sealed key from {name}'s kit")


def install(
    kit: Annotated[Path, typer.Option("--kit", help="The kit folder holding he-secret.sealed and he-params.json.")],
    site: Annotated[Path, typer.Option("--site", help="This hospital's site directory.")],
) -> None:
    """Hospital: unseal the CKKS secret context into the site and point the node config at it."""
    from fedcare.he_ceremony import CeremonyError, install_sealed_secret
    from fedcare.kits import HE_PARAMS_FILE, SEALED_HE_SECRET_FILE
    from fedcare.sealing import SealingError
    from fedcare.site import SiteDir, SiteError

    try:
        key_id = install_sealed_secret(
            SiteDir(site.resolve()), sealed=kit / SEALED_HE_SECRET_FILE, params=kit / HE_PARAMS_FILE
        )
    except (CeremonyError, SealingError, SiteError, OSError) as exc:
        raise _fail(f"not installed: {exc}") from None
    console.print(f"key set [bold]{key_id}[/] installed in {site}; compare the key id with the hospital that made it")


def add_ceremony_commands(app: typer.Typer) -> None:
    app.command()(roster)
    app.command()(relay)
    app.command()(install)
