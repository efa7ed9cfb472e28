"""`fedcare budget`: run the privacy budget service, and look at budgets from a terminal."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

DEFAULT_PORT = 8470
DEFAULT_URL = f"http://127.0.0.1:{DEFAULT_PORT}"

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


def _fmt(value: float | None, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


@budget_app.command()
def show(
    institution: Annotated[
        str | None, typer.Option(help="Only this institution, with its latest ledger events.")
    ] = None,
    url: Annotated[str, typer.Option(envvar="FEDCARE_BUDGET_URL", help="The service's address.")] = DEFAULT_URL,
    token: Annotated[
        str | None,
        typer.Option(
            envvar="FEDCARE_BUDGET_TOKEN",
            help="A bearer token (default: $FEDCARE_BUDGET_TOKEN, else $FEDCARE_ADMIN_TOKEN).",
        ),
    ] = None,
    events: Annotated[int, typer.Option(min=0, help="Ledger events to list with --institution.")] = 10,
) -> None:
    """Epsilon spent, limit and remaining per institution, as a table."""
    from server.budget_client.connection import BudgetConnection, BudgetServiceError

    token = token or os.environ.get("FEDCARE_ADMIN_TOKEN")
    if not token:
        errors.print("[red]no token:[/] pass --token or set FEDCARE_BUDGET_TOKEN (or FEDCARE_ADMIN_TOKEN)")
        raise typer.Exit(2)
    try:
        with BudgetConnection(url, token, retries=1) as client:
            budgets = client.budgets()
            if institution is not None:
                if institution not in budgets:
                    known = ", ".join(sorted(budgets)) or "none visible to this token"
                    errors.print(f"[red]no institution named {institution!r}[/] (known: {known})")
                    raise typer.Exit(1)
                budgets = {institution: budgets[institution]}
            console.print(_budget_table(budgets, url))
            if institution is not None and events:
                view = budgets[institution]
                total = client.events(view.institution_id, limit=1)["total"]
                page = client.events(view.institution_id, limit=events, offset=max(0, total - events))
                console.print(_events_table(institution, page["items"], total))
    except BudgetServiceError as exc:
        errors.print(f"[red]budget service error:[/] {exc}")
        raise typer.Exit(1) from None


def _budget_table(budgets, url: str) -> Table:
    table = Table(title=f"Privacy budgets ({url})")
    for name, justify in (
        ("institution", "left"),
        ("rounds", "right"),
        ("epsilon spent", "right"),
        ("limit", "right"),
        ("remaining", "right"),
        ("delta", "right"),
        ("after next round", "right"),
        ("flagged", "right"),
        ("last event (UTC)", "left"),
    ):
        table.add_column(name, justify=justify, no_wrap=name == "institution")
    for name, b in sorted(budgets.items()):
        remaining = _fmt(b.epsilon_remaining)
        style = (
            "red"
            if not b.can_cover_next_round
            else ("yellow" if b.epsilon_remaining < 0.2 * b.epsilon_limit else "green")
        )
        table.add_row(
            name,
            str(b.rounds),
            _fmt(b.epsilon_spent),
            _fmt(b.epsilon_limit, 2),
            f"[{style}]{remaining}[/]",
            f"{b.delta:g}",
            _fmt(b.epsilon_next_round),
            f"[red]{b.flagged_events}[/]" if b.flagged_events else "0",
            (b.last_event_at or "-")[:19].replace("T", " "),
        )
    if not budgets:
        table.caption = "no institutions registered"
    return table


def _events_table(institution: str, items: list[dict], total: int) -> Table:
    table = Table(title=f"{institution}: last {len(items)} of {total} ledger events")
    for name in (
        "run",
        "round",
        "noise",
        "sample rate",
        "steps",
        "accountant",
        "reported eps",
        "recomputed eps",
        "flag",
    ):
        table.add_column(name, justify="left" if name in ("run", "accountant", "flag") else "right")
    for e in items:
        table.add_row(
            e["run_id"],
            str(e["server_round"]),
            f"{e['noise_multiplier']:g}",
            f"{e['sample_rate']:g}",
            str(e["steps"]),
            e["accountant"],
            _fmt(e["epsilon"]),
            _fmt(e["epsilon_recomputed"]),
            f"[red]{e['flag_reason']}[/]" if e["flagged"] else "",
        )
    return table


if __name__ == "__main__":
    budget_app()
