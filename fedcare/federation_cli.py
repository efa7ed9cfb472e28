"""`fedcare federation ...`: set up a federation directory, and finish registrations left pending.

Non-interactive and path-based on purpose: the deploy tooling runs these
commands inside containers. Secrets are written to files (0600), never printed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from fedcare.federation_dir import (
    DEFAULT_BUDGET_URL,
    DEFAULT_CONTROL_ADDRESS,
    FederationDir,
    FederationDirError,
    init_federation,
    issue_budget_certificate,
)
from fedcare.registration import RegistrationError
from fedcare.registration_cli import (
    BudgetOption,
    FederationOption,
    SuperLinkOption,
    console,
    errors,
    fail,
    print_report,
    targets,
)

federation_app = typer.Typer(
    help="A federation directory: CA, SuperLink certificate, HE keys, budget admin token.",
    no_args_is_help=True,
    add_completion=False,
)


@federation_app.command()
def init(
    directory: Annotated[Path, typer.Argument(help="Where to create the federation directory.")],
    san: Annotated[
        list[str] | None,
        typer.Option(
            "--san",
            help="A DNS name or IP address hospitals use to reach the SuperLink; repeat it. "
            "Default: localhost, 127.0.0.1, ::1.",
        ),
    ] = None,
    superlink: Annotated[
        str, typer.Option("--superlink", help="The SuperLink's control API as the coordinator reaches it (HOST:PORT).")
    ] = DEFAULT_CONTROL_ADDRESS,
    fleet_address: Annotated[
        str | None,
        typer.Option(help="What hospitals' SuperNodes dial (HOST:PORT). Default: the first --san, port 9092."),
    ] = None,
    budget_url: Annotated[
        str, typer.Option(help="The budget service's URL; '' for a federation without one.")
    ] = DEFAULT_BUDGET_URL,
    he: Annotated[
        bool,
        typer.Option(
            "--he",
            help="Single-operator setups only: the coordinator makes the CKKS keys and one-step kits copy the secret. "
            "Otherwise a hospital makes them (`fedcare he keygen --site`).",
        ),
    ] = False,
    days: Annotated[int, typer.Option(min=1, help="Validity of the CA and server certificates, in days.")] = 825,
    budget_san: Annotated[
        list[str] | None,
        typer.Option(
            "--budget-san",
            help="A DNS name or IP address hospitals use to reach the budget service (HTTPS); repeat it. "
            "Default: the --san values.",
        ),
    ] = None,
) -> None:
    """Create a federation directory: CA, SuperLink and budget service certificates, HE keys (--he), admin token."""
    try:
        fed = init_federation(
            directory,
            budget_sans=tuple(budget_san) if budget_san else None,
            sans=tuple(san or ("localhost", "127.0.0.1", "::1")),
            control_address=superlink,
            fleet_address=fleet_address,
            budget_url=budget_url,
            he=he,
            days=days,
        )
    except (FederationDirError, ValueError) as exc:
        raise fail(f"no federation created: {exc}", 2) from None
    config = fed.config()
    table = Table(title=f"federation directory {fed.root}")
    table.add_column("file")
    table.add_column("what it is for")
    table.add_column("mode")
    rows = [
        (fed.ca_certificate, "CA certificate: copied into every kit"),
        (fed.ca_key, "CA private key: re-issues the SuperLink certificate; keep it offline"),
        (fed.server_certificate, f"SuperLink certificate for {', '.join(config.dns_names + config.ip_addresses)}"),
        (fed.server_key, "SuperLink private key: only the SuperLink reads it"),
        (fed.admin_token_file, "budget service admin token (FEDCARE_ADMIN_TOKEN)"),
        (
            fed.budget_certificate,
            f"budget service certificate for {', '.join(config.budget_dns_names + config.budget_ip_addresses)}",
        ),
        (fed.budget_key, "budget service private key: only the budget service reads it"),
    ]
    if he:
        rows += [
            (fed.he_dir / "hospital", "CKKS secret context: copied into kits only"),
            (fed.he_dir / "server", "CKKS context without keys: for the ServerApp"),
        ]
    for path, what in rows:
        table.add_row(str(path.relative_to(fed.root)), what, oct(path.stat().st_mode & 0o777))
    console.print(table)
    console.print(
        "SuperLink: start it with `python -m fedcare.fast_superlink -- "
        f"--ssl-ca-certfile {fed.ca_certificate} --ssl-certfile {fed.server_certificate} "
        f"--ssl-keyfile {fed.server_key} --enable-supernode-auth --database <state>/superlink.db`; "
        f"hospitals dial {config.fleet_address}."
    )
    if he:
        errors.print(
            f"[bold red]The coordinator made the CKKS secret ({fed.he_dir / 'hospital'}) and can read every update.[/] "
            "Single-operator setups only; otherwise a hospital makes the key set (docs/he.md, the key ceremony)."
        )
    console.print(
        "Next: each hospital runs `fedcare institution join NAME --out SITE`, then "
        f"`fedcare institution register --request FILE --epsilon-limit E --delta D --federation {fed.root}`"
    )


@federation_app.command("budget-cert")
def budget_cert(
    san: Annotated[
        list[str],
        typer.Option("--san", help="A DNS name or IP address hospitals use to reach the budget service; repeat it."),
    ],
    federation: FederationOption = Path("."),
    days: Annotated[int, typer.Option(min=1, help="Validity in days (never beyond the CA's).")] = 825,
) -> None:
    """Issue the budget service's HTTPS certificate from the federation CA, for the names hospitals dial.

    Hospitals need nothing new (their kits hold the CA); restart the budget service to serve the new one."""
    from common.tls import CertificateAuthorityError

    fed = FederationDir(federation.resolve())
    try:
        files = issue_budget_certificate(fed, sans=tuple(san), days=days)
    except (FederationDirError, CertificateAuthorityError, ValueError) as exc:
        raise fail(f"no certificate issued: {exc}", 2) from None
    console.print(f"budget service certificate {files.server_certificate} for {', '.join(san)}")
    console.print(f"  key {files.server_key} (0600): only the budget service reads it")
    console.print(
        f"Serve it: `fedcare budget serve --host 0.0.0.0 --tls-certfile {files.server_certificate} "
        f"--tls-keyfile {files.server_key}` (or FEDCARE_BUDGET_TLS_CERTFILE / FEDCARE_BUDGET_TLS_KEYFILE)."
    )


@federation_app.command("sync")
def sync_command(
    federation: FederationOption = Path("."), superlink: SuperLinkOption = None, budget_url: BudgetOption = None
) -> None:
    """Finish registrations and revocations left pending while the SuperLink or the budget service was down."""
    from fedcare.registration import sync

    fed = FederationDir(federation.resolve())
    try:
        link, budget = targets(fed, superlink, budget_url)
        reports = sync(fed, superlink=link, budget=budget)
    except (FederationDirError, RegistrationError) as exc:
        raise fail(str(exc)) from None
    if not reports:
        console.print("nothing pending")
    for report in reports:
        print_report(report, verb="synced")
    if any(r.pending for r in reports):
        raise typer.Exit(3)
