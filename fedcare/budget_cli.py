"""`fedcare budget`: run the privacy budget service, and look at budgets from a terminal."""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

DEFAULT_PORT = 8470
DEFAULT_URL = f"https://127.0.0.1:{DEFAULT_PORT}"

budget_app = typer.Typer(
    help="The privacy budget service: serve it, or show budgets.", no_args_is_help=True, add_completion=False
)
console = Console()
errors = Console(stderr=True)
log = logging.getLogger("fedcare.budget")


@budget_app.command()
def serve(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port to listen on.")] = DEFAULT_PORT,
    database_url: Annotated[
        str | None, typer.Option(help="SQLAlchemy URL (default: $DATABASE_URL, else sqlite:///./fedcare-budget.db).")
    ] = None,
    workers: Annotated[
        int, typer.Option(min=1, help="uvicorn worker processes (one per core serves the most reads).")
    ] = 1,
    dev: Annotated[
        bool, typer.Option("--dev", help="Development mode: allow an empty or placeholder admin token.")
    ] = False,
    log_level: Annotated[str, typer.Option(help="debug, info, warning or error.")] = "info",
    tls_certfile: Annotated[
        Path | None,
        typer.Option(help="Certificate from the federation CA (default: $FEDCARE_BUDGET_TLS_CERTFILE)."),
    ] = None,
    tls_keyfile: Annotated[
        Path | None, typer.Option(help="Its private key, mode 0600 (default: $FEDCARE_BUDGET_TLS_KEYFILE).")
    ] = None,
    insecure_http: Annotated[
        bool,
        typer.Option(
            "--insecure-http", help="Serve plain HTTP (loopback, or behind a TLS proxy); tokens then cross in clear."
        ),
    ] = False,
) -> None:
    """Serve the budget API, /metrics and /dashboard over HTTPS with uvicorn.

    The admin token comes from $FEDCARE_ADMIN_TOKEN; the certificate and key from the options or
    $FEDCARE_BUDGET_TLS_CERTFILE / $FEDCARE_BUDGET_TLS_KEYFILE (`fedcare federation budget-cert` issues them)."""
    import shutil
    import tempfile

    import uvicorn
    from pydantic import ValidationError

    from server.budget.core.config import BudgetSettings

    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    overrides: dict[str, object] = {}
    if database_url is not None:
        overrides["database_url"] = database_url
    if dev:
        overrides["development"] = True
    if tls_certfile is not None:
        overrides["tls_certfile"] = tls_certfile
    if tls_keyfile is not None:
        overrides["tls_keyfile"] = tls_keyfile
    if insecure_http:
        overrides["insecure_http"] = True
    try:
        settings = BudgetSettings(**overrides)
    except ValidationError as exc:
        reasons = "; ".join(str(e["msg"]).removeprefix("Value error, ") for e in exc.errors())
        errors.print(f"[red]refusing to start:[/] {reasons}")
        raise typer.Exit(2) from None
    problem = settings.transport_problem()
    if problem is not None:
        errors.print(f"[red]refusing to start:[/] {problem}")
        raise typer.Exit(2)
    if settings.tls_certfile is None:
        log.warning(
            "INSECURE HTTP (asked for with --insecure-http / FEDCARE_BUDGET_INSECURE_HTTP): tokens and budgets cross "
            "the network in clear, and browsers keep the dashboard's Secure session cookie only from localhost. "
            "Serve it on loopback only, or behind a proxy that terminates TLS."
        )
    errors.print(f"budget service on {settings.scheme}://{host}:{port} (API /v1, docs /docs, dashboard /dashboard)")
    # Keep-alive outlives a benchmark's or a ServerApp's pauses between calls;
    # a reconnect costs more than an idle socket.
    options = dict(
        host=host,
        port=port,
        log_level=log_level.lower(),
        access_log=False,
        timeout_keep_alive=75,
        timeout_graceful_shutdown=5,
    )
    if settings.tls_certfile is not None and settings.tls_keyfile is not None:
        options.update(ssl_certfile=str(settings.tls_certfile), ssl_keyfile=str(settings.tls_keyfile))
    if workers == 1:
        from server.budget.main import create_app

        uvicorn.run(create_app(settings), **options)
        return
    # Workers build the app from the environment (server.budget.main:app): hand them exactly these settings,
    # including a development token generated here, so every worker accepts the same one.
    os.environ.update(
        {
            "FEDCARE_BUDGET_DATABASE_URL": settings.database_url,
            "FEDCARE_ADMIN_TOKEN": settings.admin_token.get_secret_value(),
            "FEDCARE_BUDGET_DEVELOPMENT": "1" if settings.development else "0",
            "FEDCARE_BUDGET_INSECURE_HTTP": "1" if settings.insecure_http else "0",
            **{
                name: str(path)
                for name, path in (
                    ("FEDCARE_BUDGET_TLS_CERTFILE", settings.tls_certfile),
                    ("FEDCARE_BUDGET_TLS_KEYFILE", settings.tls_keyfile),
                )
                if path is not None
            },
        }
    )
    from server.budget.core.db import make_engine, upgrade_schema

    engine = make_engine(settings)
    upgrade_schema(engine)  # once, before the workers race to do it
    engine.dispose()
    own_dir = not os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    metrics_dir = os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", tempfile.mkdtemp(prefix="fedcare-budget-metrics-"))
    for stale in Path(metrics_dir).glob("*.db"):
        stale.unlink()
    try:
        uvicorn.run("server.budget.main:app", workers=workers, **options)
    finally:
        if own_dir:
            shutil.rmtree(metrics_dir, ignore_errors=True)


@budget_app.command()
def show(
    kit: Annotated[
        Path | None,
        typer.Option(
            "--kit",
            help="A hospital's site directory (or kit): its budget URL, CA and token file. Shows its own budget.",
        ),
    ] = None,
    institution: Annotated[
        str | None, typer.Option(help="Only this institution, with its latest ledger events.")
    ] = None,
    url: Annotated[
        str | None,
        typer.Option(
            envvar="FEDCARE_BUDGET_URL", help=f"The service's address (default: kit.json's, or {DEFAULT_URL})."
        ),
    ] = None,
    ca: Annotated[
        Path | None,
        typer.Option(
            envvar="FEDCARE_BUDGET_CA", help="The federation CA to verify the service with (default: the kit's)."
        ),
    ] = None,
    token_file: Annotated[
        Path | None, typer.Option(help="A file holding a bearer token (0600); better than --token.")
    ] = None,
    token: Annotated[
        str | None,
        typer.Option(
            envvar="FEDCARE_BUDGET_TOKEN",
            help="A bearer token (default: $FEDCARE_BUDGET_TOKEN, else $FEDCARE_ADMIN_TOKEN). A token on a command "
            "line is visible to other users: prefer --kit or --token-file.",
        ),
    ] = None,
    events: Annotated[int, typer.Option(min=0, help="Ledger events to list with --institution or --kit.")] = 10,
) -> None:
    """Epsilon spent, limit and remaining: a hospital's own (`--kit SITE_DIR`), or every institution a token sees."""
    from fedcare.budget_access import BudgetAccessError, access_from_options, access_from_site, explain
    from server.budget_client.connection import BudgetConnection, BudgetServiceError

    try:
        if kit is not None:
            access = access_from_site(kit, url=url)
            access = access if ca is None else dataclasses.replace(access, ca_certificate=ca)
        else:
            access = access_from_options(url=url or DEFAULT_URL, token_file=token_file, token=token, ca_certificate=ca)
    except BudgetAccessError as exc:
        errors.print(f"[red]cannot ask the budget service:[/] {exc}")
        raise typer.Exit(2) from None
    try:
        with BudgetConnection(access.url, access.token, retries=1, ca_certificate=access.ca_certificate) as client:
            _show(client, access.url, institution=institution, events=events, own=kit is not None)
    except BudgetServiceError as exc:
        errors.print(f"[red]{explain(exc, access)}[/]")
        raise typer.Exit(1) from None


def _show(client, url: str, *, institution: str | None, events: int, own: bool) -> None:
    from fedcare.budget_tables import budget_table, events_table, summary_line

    budgets = client.budgets(institution=institution)
    console.print(budget_table(budgets, url))
    if len(budgets) != 1 or not (own or institution is not None):
        return
    (view,) = budgets.values()
    console.print(summary_line(view))
    if events:
        total = client.events(view.institution_id, limit=1)["total"]
        page = client.events(view.institution_id, limit=events, offset=max(0, total - events))
        console.print(events_table(view.institution, page["items"], total))


if __name__ == "__main__":
    budget_app()
