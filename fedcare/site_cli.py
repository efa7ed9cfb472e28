"""`fedcare institution join` and `install`: the hospital's own commands, run at the hospital.

`join` makes the hospital's keys where they will be used and writes the registration request
(public parts only) to send to the coordinator; `install` takes the kit the coordinator answers
with. No private key crosses between sites in either direction.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

console = Console()
errors = Console(stderr=True)


def join(
    name: Annotated[str, typer.Argument(help="The institution's name, as the ledger will list it.")],
    out: Annotated[Path, typer.Option("--out", help="The site directory to create (it keeps the private keys).")],
    force: Annotated[
        bool, typer.Option("--force", help="Make new keys in an existing site (kits issued for the old ones stop).")
    ] = False,
) -> None:
    """Make this hospital's node key and sealing key, and the registration request for the coordinator."""
    from fedcare.site import SiteError, join_site

    try:
        site, request = join_site(out, name, force=force)
    except (SiteError, ValueError) as exc:
        errors.print(f"[red]not joined:[/] {exc}")
        raise typer.Exit(2) from None
    console.print(f"[bold]{name}[/]: site directory {site.root}")
    console.print(f"  node key {request.node_key_fingerprint} ({site.node_key.name} stays here, 0600)")
    console.print(f"  sealing key {site.sealing_key.name} (stays here, 0600): secrets reach this site sealed to it")
    console.print(
        f"Send {site.request} to the coordinator (it is public). Tell them the node key fingerprint over "
        "another channel, so they can check the request is yours."
    )


def install(
    kit: Annotated[Path, typer.Option("--kit", help="The kit folder the coordinator sent.")],
    site: Annotated[Path, typer.Option("--site", help="This hospital's site directory (from `join`).")],
    data_path: Annotated[
        str | None, typer.Option(help="The data file, if not SITE/data.csv (written into node-config.toml).")
    ] = None,
) -> None:
    """Install the coordinator's kit: check it is for this site's key, unseal the budget token and HE secret."""
    from fedcare.site import SiteError, install_kit

    try:
        report = install_kit(kit, site, data_path=data_path)
    except (SiteError, ValueError) as exc:  # ValueError: SealingError, CeremonyError (a sealed file that fails)
        errors.print(f"[red]not installed:[/] {exc}")
        raise typer.Exit(2) from None
    console.print(f"kit {kit} installed into {report.site}")
    for line in report.done:
        console.print(f"  [green]done[/]    {line}")
    for line in report.notes:
        console.print(f"  [yellow]note[/]    {line}")
    console.print(f"Start the SuperNode from {report.site} (its README.md says how).")


def add_site_commands(app: typer.Typer) -> None:
    app.command()(join)
    app.command()(install)
