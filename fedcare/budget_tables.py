"""Rich tables of budgets and ledger events for `fedcare budget show`."""

from __future__ import annotations

from rich.table import Table

from server.budget_client.connection import BudgetView


def fmt(value: float | None, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def summary_line(view: BudgetView) -> str:
    """One institution's budget in a sentence: what a hospital asks first."""
    return (
        f"[bold]{view.institution}[/]: epsilon spent {fmt(view.epsilon_spent)} of {fmt(view.epsilon_limit, 2)}, "
        f"{fmt(view.epsilon_remaining)} remaining (delta {view.delta:g}, {view.rounds} round(s))"
    )


def budget_table(budgets: dict[str, BudgetView], url: str) -> Table:
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
        remaining = fmt(b.epsilon_remaining)
        style = (
            "red"
            if not b.can_cover_next_round
            else ("yellow" if b.epsilon_remaining < 0.2 * b.epsilon_limit else "green")
        )
        table.add_row(
            name,
            str(b.rounds),
            fmt(b.epsilon_spent),
            fmt(b.epsilon_limit, 2),
            f"[{style}]{remaining}[/]",
            f"{b.delta:g}",
            fmt(b.epsilon_next_round),
            f"[red]{b.flagged_events}[/]" if b.flagged_events else "0",
            (b.last_event_at or "-")[:19].replace("T", " "),
        )
    if not budgets:
        table.caption = "no institutions registered"
    return table


def events_table(institution: str, items: list[dict], total: int) -> Table:
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
            fmt(e["epsilon"]),
            fmt(e["epsilon_recomputed"]),
            f"[red]{e['flag_reason']}[/]" if e["flagged"] else "",
        )
    return table
