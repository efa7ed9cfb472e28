"""The ledger's rules: what a new DP event costs its institution, and what the institution may still spend.

Spending only goes up. An institution's epsilon spent is the highest of what
the service recomputes from its stored events (at the institution's delta)
and what the hospital itself has reported: a hospital may over-count, never
under-count. A report below the recomputed epsilon, or at another delta, is
stored all the same and flagged with the reason.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from server.budget.core import accounting
from server.budget.core.errors import AccountingError
from server.budget.models import Institution, PrivacyEvent
from server.budget.schemas import BudgetPublic, EventCreate, RunInstitutionSpending

log = logging.getLogger("fedcare.budget")


@dataclass
class Spending:
    """What one new event does to its institution's ledger."""

    recomputed: float  # cumulative, with the event's accountant and delta
    institution_recomputed: float  # cumulative, at the institution's delta
    spent: float
    next_round: float
    reasons: list[str]


def assess(institution: Institution, event: EventCreate, history: accounting.History) -> Spending:
    """The spending after `event`; `history` holds the institution's stored events and this one.

    Raises AccountingError naming the event and its numbers when epsilon cannot be recomputed.
    """
    try:
        return _assess(institution, event, history)
    except AccountingError as exc:
        raise AccountingError(
            f"event (run {event.run_id}, round {event.server_round}, institution {institution.name!r}) with "
            f"noise_multiplier={event.noise_multiplier:g}, sample_rate={event.sample_rate:g}, steps={event.steps}, "
            f"delta={event.delta:g} (institution's delta {institution.delta:g}), after {institution.rounds} stored "
            f"event(s): {exc}"
        ) from exc


def _assess(institution: Institution, event: EventCreate, history: accounting.History) -> Spending:
    acc = event.accountant
    recomputed = accounting.cumulative_epsilon(history, accountant=acc, delta=event.delta)
    at_own_delta = (
        recomputed
        if event.delta == institution.delta
        else accounting.cumulative_epsilon(history, accountant=acc, delta=institution.delta)
    )
    spent = max(institution.epsilon_spent, at_own_delta, institution.epsilon_reported_max, event.epsilon)
    again = accounting.with_event(
        history, noise_multiplier=event.noise_multiplier, sample_rate=event.sample_rate, steps=event.steps
    )
    next_round = spent + max(
        0.0, accounting.cumulative_epsilon(again, accountant=acc, delta=institution.delta) - at_own_delta
    )
    reasons = []
    if accounting.under_reported(reported=event.epsilon, recomputed=recomputed):
        reasons.append(
            f"under-reported: the client says epsilon {event.epsilon:.6g} but its {institution.rounds + 1} "
            f"stored event(s) give {recomputed:.6g} ({acc}, delta {event.delta:g})"
        )
    if event.delta != institution.delta:
        reasons.append(
            f"delta mismatch: reported at delta {event.delta:g}, the institution's delta is {institution.delta:g}"
        )
    return Spending(recomputed, at_own_delta, spent, next_round, reasons)


def charge(institution: Institution, event: EventCreate, history: accounting.History, *, now: datetime) -> PrivacyEvent:
    """The stored row for a new `event`, with the institution's running summary updated to include it."""
    spending = assess(institution, event, history)
    row = PrivacyEvent(
        run_id=event.run_id,
        server_round=event.server_round,
        institution=institution,
        noise_multiplier=event.noise_multiplier,
        sample_rate=event.sample_rate,
        steps=event.steps,
        accountant=event.accountant,
        epsilon_reported=event.epsilon,
        delta=event.delta,
        received_at=now,
        epsilon_recomputed=spending.recomputed,
        epsilon_spent_after=spending.spent,
        flagged=bool(spending.reasons),
        flag_reason="; ".join(spending.reasons) or None,
    )
    institution.epsilon_recomputed = spending.institution_recomputed
    institution.epsilon_reported_max = max(institution.epsilon_reported_max, event.epsilon)
    institution.epsilon_spent = spending.spent
    institution.epsilon_next_round = spending.next_round
    institution.rounds += 1
    institution.flagged_events += bool(spending.reasons)
    institution.last_event_at = now
    if spending.reasons:
        log.warning(
            "run %s round %d %s: event flagged: %s", event.run_id, event.server_round, institution.name, row.flag_reason
        )
    return row


def retry_outcome(stored: PrivacyEvent, event: EventCreate) -> Literal["duplicate", "conflict"]:
    """An event under a stored event's key: a `duplicate` (same numbers) or a `conflict`; the stored one stands."""
    kept = (stored.noise_multiplier, stored.sample_rate, stored.steps, stored.accountant, stored.epsilon_reported)
    retried = (event.noise_multiplier, event.sample_rate, event.steps, event.accountant, event.epsilon)
    if (*kept, stored.delta) == (*retried, event.delta):
        return "duplicate"
    log.warning(
        "run %s round %d %s: a retry with other numbers was ignored; the stored event stands "
        "(stored epsilon %g, retried %g)",
        event.run_id,
        event.server_round,
        stored.institution.name,
        stored.epsilon_reported,
        event.epsilon,
    )
    return "conflict"


def run_spending(rows: list[PrivacyEvent], *, epsilon_before: float) -> RunInstitutionSpending:
    """One institution's spending in one run: its stored `rows` of that run, in order, and its spending before."""
    after = max(r.epsilon_spent_after for r in rows)
    return RunInstitutionSpending(
        institution_id=rows[0].institution_id,
        institution=rows[0].institution.name,
        rounds=len(rows),
        first_round=min(r.server_round for r in rows),
        last_round=max(r.server_round for r in rows),
        epsilon_before=epsilon_before,
        epsilon_after=after,
        epsilon_spent_in_run=max(0.0, after - epsilon_before),
        flagged_events=sum(r.flagged for r in rows),
    )


def budget_of(institution: Institution) -> BudgetPublic:
    """What the institution has spent and whether another round like its last one still fits its limit."""
    spent, limit = institution.epsilon_spent, institution.epsilon_limit
    next_round = institution.epsilon_next_round
    return BudgetPublic(
        institution_id=institution.id,
        institution=institution.name,
        epsilon_spent=spent,
        epsilon_limit=limit,
        epsilon_remaining=max(0.0, limit - spent),
        delta=institution.delta,
        rounds=institution.rounds,
        last_event_at=institution.last_event_at,
        epsilon_recomputed=institution.epsilon_recomputed,
        epsilon_reported=institution.epsilon_reported_max,
        epsilon_next_round=next_round,
        can_cover_next_round=(next_round <= limit) if next_round is not None else spent < limit,
        flagged_events=institution.flagged_events,
    )
