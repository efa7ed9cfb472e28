"""Reading and writing the ledger. Keyword-only functions; routes stay thin.

Writing events is idempotent on (run_id, server_round, institution): a retry
with the same numbers is a `duplicate`, one with other numbers a `conflict`;
either way the stored event is returned unchanged and nothing is added.
Writers of one institution are serialized (SQLite: BEGIN IMMEDIATE;
PostgreSQL: SELECT ... FOR UPDATE on the institution rows, in id order), so
each event's cumulative epsilon is computed over exactly the events received
before it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from server.budget.core import accounting
from server.budget.core.db import begin_write
from server.budget.core.security import Principal, Role, hash_token, new_token
from server.budget.models import (
    ApiToken, BudgetPublic, EventCreate, EventOutcome, EventPublic, EventsWritten, Institution, InstitutionCreate,
    PrivacyEvent, RunBudget, RunInstitutionSpending, utcnow,
)

log = logging.getLogger("fedcare.budget")


class LedgerError(ValueError):
    """A request the ledger cannot carry out; the message says why."""


class UnknownInstitution(LedgerError):
    pass


class DuplicateName(LedgerError):
    pass


def create_institution(*, session: Session, payload: InstitutionCreate) -> tuple[Institution, str]:
    """A new institution and its API token (returned once; only the hash is stored)."""
    begin_write(session)
    if session.scalar(select(Institution.id).where(Institution.name == payload.name)) is not None:
        session.rollback()
        raise DuplicateName(f"an institution named {payload.name!r} already exists")
    institution = Institution(name=payload.name, epsilon_limit=payload.epsilon_limit, delta=payload.delta)
    session.add(institution)
    session.flush()
    token = new_token()
    session.add(ApiToken(token_hash=hash_token(token), role=Role.institution, name=payload.name, institution_id=institution.id))
    try:
        session.commit()
    except IntegrityError:
        session.rollback()
        raise DuplicateName(f"an institution named {payload.name!r} already exists") from None
    log.info("registered institution %r (id %d, epsilon limit %g, delta %g)", institution.name, institution.id,
             institution.epsilon_limit, institution.delta)
    return institution, token


def create_aggregator(*, session: Session, name: str) -> tuple[ApiToken, str]:
    begin_write(session)
    token = new_token()
    row = ApiToken(token_hash=hash_token(token), role=Role.aggregator, name=name)
    session.add(row)
    session.commit()
    log.info("issued aggregator token %r (id %d)", name, row.id)
    return row, token


def principal_for_digest(*, session: Session, digest: str) -> Principal | None:
    row = session.scalar(select(ApiToken).where(ApiToken.token_hash == digest))
    if row is None:
        return None
    return Principal(role=Role(row.role), name=row.name, institution_id=row.institution_id)


def list_institutions(*, session: Session) -> list[Institution]:
    return list(session.scalars(select(Institution).order_by(Institution.id)))


def get_institution(*, session: Session, institution_id: int) -> Institution | None:
    return session.get(Institution, institution_id)


def budget_of(institution: Institution) -> BudgetPublic:
    spent, limit = institution.epsilon_spent, institution.epsilon_limit
    next_round = institution.epsilon_next_round
    return BudgetPublic(
        institution_id=institution.id, institution=institution.name, epsilon_spent=spent, epsilon_limit=limit,
        epsilon_remaining=max(0.0, limit - spent), delta=institution.delta, rounds=institution.rounds,
        last_event_at=institution.last_event_at, epsilon_recomputed=institution.epsilon_recomputed,
        epsilon_reported=institution.epsilon_reported_max, epsilon_next_round=next_round,
        can_cover_next_round=(next_round <= limit) if next_round is not None else spent < limit,
        flagged_events=institution.flagged_events,
    )


def list_events(*, session: Session, institution_id: int, limit: int, offset: int) -> tuple[list[PrivacyEvent], int]:
    where = PrivacyEvent.institution_id == institution_id
    total = session.scalar(select(func.count()).select_from(PrivacyEvent).where(where)) or 0
    rows = session.scalars(select(PrivacyEvent).where(where).order_by(PrivacyEvent.id).limit(limit).offset(offset))
    return list(rows), total


def _history(session: Session, institution_id: int) -> dict[tuple[float, float], int]:
    rows = session.execute(
        select(PrivacyEvent.noise_multiplier, PrivacyEvent.sample_rate, func.sum(PrivacyEvent.steps))
        .where(PrivacyEvent.institution_id == institution_id)
        .group_by(PrivacyEvent.noise_multiplier, PrivacyEvent.sample_rate)
    )
    return {(float(n), float(q)): int(s) for n, q, s in rows}


def _same_numbers(row: PrivacyEvent, event: EventCreate) -> bool:
    return (row.noise_multiplier, row.sample_rate, row.steps, row.accountant, row.epsilon_reported, row.delta) == (
        event.noise_multiplier, event.sample_rate, event.steps, event.accountant, event.epsilon, event.delta)


@dataclass
class _Spending:
    """What one new event does to its institution's ledger."""

    recomputed: float  # cumulative, with the event's accountant and delta
    institution_recomputed: float  # cumulative, at the institution's delta
    spent: float
    next_round: float
    reasons: list[str]


def _assess(institution: Institution, event: EventCreate, history: dict) -> _Spending:
    acc = event.accountant
    recomputed = accounting.cumulative_epsilon(history, accountant=acc, delta=event.delta)
    at_own_delta = recomputed if event.delta == institution.delta else accounting.cumulative_epsilon(
        history, accountant=acc, delta=institution.delta)
    spent = max(institution.epsilon_spent, at_own_delta, institution.epsilon_reported_max, event.epsilon)
    again = accounting.with_event(history, noise_multiplier=event.noise_multiplier, sample_rate=event.sample_rate,
                                  steps=event.steps)
    next_round = spent + max(0.0, accounting.cumulative_epsilon(again, accountant=acc, delta=institution.delta) - at_own_delta)
    reasons = []
    if accounting.under_reported(reported=event.epsilon, recomputed=recomputed):
        reasons.append(f"under-reported: the client says epsilon {event.epsilon:.6g} but its {institution.rounds + 1} "
                       f"stored event(s) give {recomputed:.6g} ({acc}, delta {event.delta:g})")
    if event.delta != institution.delta:
        reasons.append(f"delta mismatch: reported at delta {event.delta:g}, the institution's delta is {institution.delta:g}")
    return _Spending(recomputed, at_own_delta, spent, next_round, reasons)


def record_events(*, session: Session, events: list[EventCreate]) -> EventsWritten:
    """Store new events (all or none), recompute spending, and say what happened to each."""
    begin_write(session)
    names = sorted({e.institution for e in events})
    query = select(Institution).where(Institution.name.in_(names)).order_by(Institution.id)
    if session.get_bind().dialect.name == "postgresql":
        query = query.with_for_update()
    institutions = {i.name: i for i in session.scalars(query)}
    unknown = [f"events[{i}].institution {e.institution!r}" for i, e in enumerate(events) if e.institution not in institutions]
    if unknown:
        session.rollback()
        raise UnknownInstitution(f"unknown institution: {', '.join(unknown[:10])}; register it first (POST /v1/institutions)")

    histories: dict[int, dict] = {}
    results: list[tuple[str, PrivacyEvent]] = []
    for event in events:
        institution = institutions[event.institution]
        stored = session.scalar(select(PrivacyEvent).where(
            PrivacyEvent.run_id == event.run_id, PrivacyEvent.server_round == event.server_round,
            PrivacyEvent.institution_id == institution.id))
        if stored is not None:
            outcome = "duplicate" if _same_numbers(stored, event) else "conflict"
            if outcome == "conflict":
                log.warning("run %s round %d %s: a retry with other numbers was ignored; the stored event stands "
                            "(stored epsilon %g, retried %g)", event.run_id, event.server_round, institution.name,
                            stored.epsilon_reported, event.epsilon)
            results.append((outcome, stored))
            continue
        history = histories.get(institution.id)
        if history is None:
            history = _history(session, institution.id)
        history = accounting.with_event(history, noise_multiplier=event.noise_multiplier,
                                        sample_rate=event.sample_rate, steps=event.steps)
        histories[institution.id] = history
        spending = _assess(institution, event, history)
        now = utcnow()
        row = PrivacyEvent(
            run_id=event.run_id, server_round=event.server_round, institution=institution,
            noise_multiplier=event.noise_multiplier, sample_rate=event.sample_rate, steps=event.steps,
            accountant=event.accountant, epsilon_reported=event.epsilon, delta=event.delta, received_at=now,
            epsilon_recomputed=spending.recomputed, epsilon_spent_after=spending.spent,
            flagged=bool(spending.reasons), flag_reason="; ".join(spending.reasons) or None,
        )
        session.add(row)
        institution.epsilon_recomputed = spending.institution_recomputed
        institution.epsilon_reported_max = max(institution.epsilon_reported_max, event.epsilon)
        institution.epsilon_spent = spending.spent
        institution.epsilon_next_round = spending.next_round
        institution.rounds += 1
        institution.flagged_events += bool(spending.reasons)
        institution.last_event_at = now
        if spending.reasons:
            log.warning("run %s round %d %s: event flagged: %s", event.run_id, event.server_round, institution.name,
                        row.flag_reason)
        session.flush()
        results.append(("created", row))
    session.commit()
    outcomes = [EventOutcome(outcome=outcome, event=EventPublic.of(row)) for outcome, row in results]
    counts = {k: sum(o.outcome == k for o in outcomes) for k in ("created", "duplicate", "conflict")}
    return EventsWritten(created=counts["created"], duplicates=counts["duplicate"], conflicts=counts["conflict"],
                         results=outcomes)


def run_budget(*, session: Session, run_id: str, institution_id: int | None = None) -> RunBudget | None:
    query = select(PrivacyEvent).where(PrivacyEvent.run_id == run_id).order_by(PrivacyEvent.id)
    if institution_id is not None:
        query = query.where(PrivacyEvent.institution_id == institution_id)
    by_institution: dict[int, list[PrivacyEvent]] = {}
    for row in session.scalars(query):
        by_institution.setdefault(row.institution_id, []).append(row)
    if not by_institution:
        return None
    spending = []
    for inst_id, rows in by_institution.items():
        before = session.scalar(
            select(PrivacyEvent.epsilon_spent_after)
            .where(PrivacyEvent.institution_id == inst_id, PrivacyEvent.id < rows[0].id)
            .order_by(PrivacyEvent.id.desc()).limit(1)
        ) or 0.0
        after = max(r.epsilon_spent_after for r in rows)
        spending.append(RunInstitutionSpending(
            institution_id=inst_id, institution=rows[0].institution.name, rounds=len(rows),
            first_round=min(r.server_round for r in rows), last_round=max(r.server_round for r in rows),
            epsilon_before=before, epsilon_after=after, epsilon_spent_in_run=max(0.0, after - before),
            flagged_events=sum(r.flagged for r in rows),
        ))
    return RunBudget(run_id=run_id, institutions=sorted(spending, key=lambda s: s.institution))


def spending_series(*, session: Session, institution_ids: list[int], points: int) -> dict[int, list[tuple[int, float]]]:
    """(round number over all runs, epsilon spent after it) for the last `points` events of each institution."""
    series: dict[int, list[tuple[int, float]]] = {}
    for inst_id in institution_ids:
        total = session.scalar(select(func.count()).select_from(PrivacyEvent).where(PrivacyEvent.institution_id == inst_id)) or 0
        rows = list(session.execute(
            select(PrivacyEvent.epsilon_spent_after).where(PrivacyEvent.institution_id == inst_id)
            .order_by(PrivacyEvent.id.desc()).limit(points)
        ).scalars())
        first = total - len(rows) + 1
        series[inst_id] = [(first + i, eps) for i, eps in enumerate(reversed(rows))]
    return series
