"""`fedcare institution ...` at the coordinator: issue and revoke hospitals' kits, list them.

Non-interactive and path-based on purpose: the deploy tooling runs these
commands inside containers. Secrets are written to files (0600), never printed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from fedcare.federation_dir import (
    FederationDir,
    FederationDirError,
)
from fedcare.registration import RegistrationError, RegistrationReport

institution_app = typer.Typer(
    help="Hospitals: issue a kit and register it, revoke it, list them.", no_args_is_help=True, add_completion=False
)
console = Console()
errors = Console(stderr=True)

FederationOption = Annotated[Path, typer.Option("--federation", "-f", help="The federation directory (default: here).")]
SuperLinkOption = Annotated[
    str | None,
    typer.Option(
        "--superlink", help="The SuperLink's control API HOST:PORT (default: federation.toml's control-address)."
    ),
]
BudgetOption = Annotated[
    str | None, typer.Option("--budget-url", help="The budget service's URL (default: federation.toml's; '' for none).")
]


def fail(message: str, code: int = 1) -> typer.Exit:
    errors.print(f"[red]{message}[/]")
    return typer.Exit(code)


def targets(fed: FederationDir, superlink: str | None, budget_url: str | None):
    from fedcare.registration import budget_target, superlink_connection

    return superlink_connection(fed, address=superlink), budget_target(fed, url=budget_url)


def print_report(report: RegistrationReport, *, verb: str) -> None:
    console.print(f"[bold]{report.name}[/] {verb}: kit {report.kit}")
    for line in report.done:
        console.print(f"  [green]done[/]    {line}")
    for line in report.problems:
        console.print(f"  [yellow]note[/]    {line}")
    for line in report.pending:
        console.print(f"  [yellow]pending[/] {line}  (run `fedcare federation sync` once it is running)")


@institution_app.command()
def register(
    name: Annotated[
        str | None,
        typer.Argument(
            help="One-step (single-operator setups only): the institution's name; the coordinator makes its keys."
        ),
    ] = None,
    request: Annotated[
        Path | None,
        typer.Option(help="The hospital's registration-request.json (`fedcare institution join`): its own keys."),
    ] = None,
    epsilon_limit: Annotated[
        float, typer.Option(min=1e-9, help="Its lifetime epsilon limit (ledger and its own node).")
    ] = ...,
    delta: Annotated[float, typer.Option(min=1e-12, max=0.999999, help="The delta its epsilon is stated at.")] = ...,
    data_path: Annotated[
        str | None, typer.Option(help="Its data file as the hospital sees it (default: KIT/data.csv).")
    ] = None,
    kit_root: Annotated[
        str | None,
        typer.Option(
            help="Where the kit will live at the hospital, e.g. /kit in a container (default: its path here)."
        ),
    ] = None,
    node_config: Annotated[
        str | None, typer.Option(help="A whole --node-config string instead of the generated node-config.toml.")
    ] = None,
    federation: FederationOption = Path("."),
    superlink: SuperLinkOption = None,
    budget_url: BudgetOption = None,
    rotate: Annotated[
        bool,
        typer.Option(
            "--rotate",
            help="Re-issue an existing institution's kit: new node key and token; the old ones stop working.",
        ),
    ] = False,
    compose: Annotated[
        bool,
        typer.Option(
            "--compose",
            help="Also write FEDERATION/compose/<slug>.yml, a docker compose override adding its SuperNode.",
        ),
    ] = False,
) -> None:
    """Register a hospital from its request (--request: the kit holds no private key), or make its keys here.

    Registrations with a SuperLink or budget service that is not running are kept pending (exit code 3);
    `fedcare federation sync` completes them.
    """
    from fedcare.kits import KitOptions
    from fedcare.registration import register_institution
    from fedcare.registration_request import RequestError, read_request

    fed = FederationDir(federation.resolve())
    try:
        parsed = read_request(request) if request is not None else None
        if parsed is not None and name is not None and name != parsed.institution:
            raise RegistrationError(f"NAME {name!r} differs from the request's institution {parsed.institution!r}")
        name = parsed.institution if parsed is not None else name
        if name is None:
            raise RegistrationError("give --request FILE (the hospital made its keys) or a NAME (one-step)")
        link, budget = targets(fed, superlink, budget_url)
        report = register_institution(
            fed,
            KitOptions(name, epsilon_limit, delta, data_path, kit_root, node_config),
            request=parsed,
            rotate=rotate,
            superlink=link,
            budget=budget,
        )
    except (FederationDirError, RegistrationError, RequestError, ValueError) as exc:
        raise fail(f"not registered: {exc}", 2) from None
    print_report(report, verb="rotated" if rotate else "registered")
    if compose:
        from fedcare.compose import FEDERATION_VAR, write_hospital_override

        # A one-step kit holds its private key and is the node's folder as it is; otherwise the hospital's site.
        one_step = None if parsed is not None else f"{FEDERATION_VAR}/institutions/{report.kit.name}"
        override = write_hospital_override(
            fed.root, name, slug=report.kit.name, epsilon_limit=epsilon_limit, site_dir=one_step
        )
        console.print(
            f"compose override: {override} (docker compose -f docker-compose.yml -f {override} up -d {report.kit.name})"
        )
    if parsed is None:
        errors.print(
            f"[bold red]The coordinator made {name}'s keys and has seen its private node key (kit.json and the "
            "registry record it).[/] Single-operator setups only: otherwise the hospital runs `fedcare institution "
            "join` and you register its request."
        )
        console.print(f"Send {report.kit} to {name} over a channel you trust; it holds its private key and token.")
    else:
        console.print(
            f"Send {report.kit} to {name}: it holds no private key (the budget token is sealed to {name}); "
            f"check the node key fingerprint {parsed.node_key_fingerprint} with {name} over another channel."
        )
    if report.pending:
        raise typer.Exit(3)


@institution_app.command()
def revoke(
    name: Annotated[str, typer.Argument(help="The institution to shut out.")],
    federation: FederationOption = Path("."),
    superlink: SuperLinkOption = None,
    budget_url: BudgetOption = None,
) -> None:
    """Unregister NAME's SuperNode (the SuperLink disconnects it) and disable its budget token. Its ledger stays."""
    from fedcare.registration import revoke_institution

    fed = FederationDir(federation.resolve())
    try:
        link, budget = targets(fed, superlink, budget_url)
        report = revoke_institution(fed, name, superlink=link, budget=budget)
    except (FederationDirError, RegistrationError) as exc:
        raise fail(f"not revoked: {exc}", 2) from None
    print_report(report, verb="revoked")
    from fedcare.he_relay import key_set_problem  # TenSEAL: only after the revocation is done

    if problem := key_set_problem(fed):
        errors.print(f"[bold red]HE:[/] {problem}")
    if report.pending:
        raise typer.Exit(3)


@institution_app.command("list")
def list_command(federation: FederationOption = Path(".")) -> None:
    """The registered institutions: node id, SuperLink and budget state, what is pending."""
    from fedcare.registration import list_institutions

    fed = FederationDir(federation.resolve())
    try:
        fed.config()
        records = list_institutions(fed)
    except FederationDirError as exc:
        raise fail(str(exc)) from None
    table = Table(title=f"institutions of {fed.root}")
    for column in ("institution", "node id", "SuperLink", "budget", "epsilon limit", "delta", "pending"):
        table.add_column(column, no_wrap=column == "institution")
    for r in records:
        style = "red" if not r.active else ("yellow" if r.pending else "green")
        table.add_row(
            f"[{style}]{r.name}[/]",
            str(r.node_id or "-"),
            r.superlink,
            r.budget,
            f"{r.epsilon_limit:g}",
            f"{r.delta:g}",
            "; ".join(r.pending) or "-",
        )
    if not records:
        table.caption = "none yet: `fedcare institution register NAME --epsilon-limit E --delta D`"
    console.print(table)
