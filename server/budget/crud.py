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

from sqlalchemy import delete, func, select, text
from sqlalchemy.exc import DataError, IntegrityError
from sqlalchemy.orm import Session

from server.budget.core import accounting, budgets
from server.budget.core.db import begin_write
from server.budget.core.errors import DuplicateName, LedgerError, NotFound, UnknownInstitution, ValueOutOfRange
from server.budget.core.security import Principal, Role, hash_token, new_token
from server.budget.models import ApiToken, Institution, PrivacyEvent, utcnow
from server.budget.schemas import (
    AggregatorCreated,
    BudgetPublic,
    EventCreate,
    EventOutcome,
    EventPage,
    EventPublic,
    EventsWritten,
    InstitutionCreate,
    InstitutionCreated,
    InstitutionPublic,
    InstitutionToken,
    RunBudget,
    TokensRevoked,
)

log = logging.getLogger("fedcare.budget")


def create_institution(*, session: Session, payload: InstitutionCreate) -> InstitutionCreated:
    """A new institution and its API token (returned once; only the hash is stored)."""
    begin_write(session)
    if session.scalar(select(Institution.id).where(Institution.name == payload.name)) is not None:
        session.rollback()
        raise DuplicateName(f"an institution named {payload.name!r} already exists")
    institution = Institution(name=payload.name, epsilon_limit=payload.epsilon_limit, delta=payload.delta)
    session.add(institution)
    session.flush()
    token = new_token()
    session.add(
        ApiToken(token_hash=hash_token(token), role=Role.institution, name=payload.name, institution_id=institution.id)
    )
    try:
        session.commit()
    except IntegrityError:
        session.rollback()
        raise DuplicateName(f"an institution named {payload.name!r} already exists") from None
    log.info(
        "registered institution %r (id %d, epsilon limit %g, delta %g)",
        institution.name,
        institution.id,
        institution.epsilon_limit,
        institution.delta,
    )
    return InstitutionCreated(**InstitutionPublic.model_validate(institution).model_dump(), token=token)


def _delete_institution_tokens(session: Session, institution: Institution) -> int:
    result = session.execute(
        delete(ApiToken).where(ApiToken.institution_id == institution.id, ApiToken.role == Role.institution)
    )
    return int(result.rowcount or 0)


def revoke_institution_tokens(*, session: Session, institution_id: int) -> TokensRevoked:
    """Every token of the institution stops working; its records and ledger stay (they are the audit trail)."""
    begin_write(session)
    institution = _institution(session, institution_id)
    revoked = _delete_institution_tokens(session, institution)
    session.commit()
    log.warning("revoked %d token(s) of institution %r (id %d)", revoked, institution.name, institution.id)
    return TokensRevoked(institution_id=institution.id, institution=institution.name, revoked=revoked)


def rotate_institution_token(*, session: Session, institution_id: int) -> InstitutionToken:
    """A new token for the institution (a re-issued kit, or one re-admitted after revocation).

    Earlier ones stop working."""
    begin_write(session)
    institution = _institution(session, institution_id)
    revoked = _delete_institution_tokens(session, institution)
    token = new_token()
    session.add(
        ApiToken(
            token_hash=hash_token(token), role=Role.institution, name=institution.name, institution_id=institution.id
        )
    )
    session.commit()
    log.info(
        "issued a new token for institution %r (id %d); %d earlier token(s) revoked",
        institution.name,
        institution.id,
        revoked,
    )
    return InstitutionToken(institution_id=institution.id, institution=institution.name, token=token)


def create_aggregator(*, session: Session, name: str) -> AggregatorCreated:
    begin_write(session)
    token = new_token()
    row = ApiToken(token_hash=hash_token(token), role=Role.aggregator, name=name)
    session.add(row)
    session.commit()
    log.info("issued aggregator token %r (id %d)", name, row.id)
    return AggregatorCreated(id=row.id, name=row.name, token=token)


def principal_for_digest(*, session: Session, digest: str) -> Principal | None:
    row = session.scalar(select(ApiToken).where(ApiToken.token_hash == digest))
    if row is None:
        return None
    return Principal(role=Role(row.role), name=row.name, institution_id=row.institution_id)


def _institutions(session: Session, only: int | None = None, name: str | None = None) -> list[Institution]:
    query = select(Institution).order_by(Institution.id)
    if only is not None:
        query = query.where(Institution.id == only)
    if name is not None:
        query = query.where(Institution.name == name)
    return list(session.scalars(query))


def _institution(session: Session, institution_id: int) -> Institution:
    institution = session.get(Institution, institution_id)
    if institution is None:
        raise NotFound(f"no institution with id {institution_id}")
    return institution


def list_institutions(*, session: Session) -> list[InstitutionPublic]:
    return [InstitutionPublic.model_validate(i) for i in _institutions(session)]


def read_institution(*, session: Session, institution_id: int) -> InstitutionPublic:
    return InstitutionPublic.model_validate(_institution(session, institution_id))


def read_budget(*, session: Session, institution_id: int) -> BudgetPublic:
    return budgets.budget_of(_institution(session, institution_id))


def list_budgets(*, session: Session, only: int | None = None, name: str | None = None) -> list[BudgetPublic]:
    """Every institution's budget, or only the one with id `only` and/or the one named `name`."""
    return [budgets.budget_of(i) for i in _institutions(session, only, name)]


def list_events(*, session: Session, institution_id: int, limit: int, offset: int) -> EventPage:
    _institution(session, institution_id)
    where = PrivacyEvent.institution_id == institution_id
    total = session.scalar(select(func.count()).select_from(PrivacyEvent).where(where)) or 0
    rows = list(
        session.scalars(select(PrivacyEvent).where(where).order_by(PrivacyEvent.id).limit(limit).offset(offset))
    )
    return EventPage(
        items=[EventPublic.of(r) for r in rows],
        total=total,
        limit=limit,
        offset=offset,
        next_offset=offset + len(rows) if offset + len(rows) < total else None,
    )


def _history(session: Session, institution_id: int) -> dict[tuple[float, float], int]:
    rows = session.execute(
        select(PrivacyEvent.noise_multiplier, PrivacyEvent.sample_rate, func.sum(PrivacyEvent.steps))
        .where(PrivacyEvent.institution_id == institution_id)
        .group_by(PrivacyEvent.noise_multiplier, PrivacyEvent.sample_rate)
    )
    return {(float(n), float(q)): int(s) for n, q, s in rows}


def record_batches(*, session: Session, batches: list[list[EventCreate]]) -> list[EventsWritten | LedgerError]:
    """Several requests' batches in one transaction and one commit (group commit).

    Each batch is stored whole or not at all (a savepoint each); a batch the
    ledger refuses comes back as its LedgerError, the others are committed.
    """
    begin_write(session)
    staged: list[list[tuple[str, PrivacyEvent]] | LedgerError] = []
    for events in batches:
        try:
            with session.begin_nested():
                staged.append(_record(session, events))
        except LedgerError as exc:
            staged.append(exc)
        except (DataError, OverflowError) as exc:  # the limits should have refused it; still that batch's answer
            staged.append(ValueOutOfRange.of(exc))
    session.commit()
    return [result if isinstance(result, LedgerError) else _written(result) for result in staged]


def _written(results: list[tuple[str, PrivacyEvent]]) -> EventsWritten:
    outcomes = [EventOutcome(outcome=outcome, event=EventPublic.of(row)) for outcome, row in results]
    counts = {k: sum(o.outcome == k for o in outcomes) for k in ("created", "duplicate", "conflict")}
    return EventsWritten(
        created=counts["created"], duplicates=counts["duplicate"], conflicts=counts["conflict"], results=outcomes
    )


def _record(session: Session, events: list[EventCreate]) -> list[tuple[str, PrivacyEvent]]:
    names = sorted({e.institution for e in events})
    query = select(Institution).where(Institution.name.in_(names)).order_by(Institution.id)
    if session.get_bind().dialect.name == "postgresql":
        query = query.with_for_update()
    institutions = {i.name: i for i in session.scalars(query)}
    unknown = [
        f"events[{i}].institution {e.institution!r}" for i, e in enumerate(events) if e.institution not in institutions
    ]
    if unknown:
        raise UnknownInstitution(
            f"unknown institution: {', '.join(unknown[:10])}; register it first (POST /v1/institutions)"
        )

    histories: dict[int, dict] = {}
    results: list[tuple[str, PrivacyEvent]] = []
    for event in events:
        institution = institutions[event.institution]
        stored = session.scalar(
            select(PrivacyEvent).where(
                PrivacyEvent.run_id == event.run_id,
                PrivacyEvent.server_round == event.server_round,
                PrivacyEvent.institution_id == institution.id,
            )
        )
        if stored is not None:
            results.append((budgets.retry_outcome(stored, event), stored))
            continue
        history = histories.get(institution.id)
        if history is None:
            history = _history(session, institution.id)
        history = accounting.with_event(
            history, noise_multiplier=event.noise_multiplier, sample_rate=event.sample_rate, steps=event.steps
        )
        histories[institution.id] = history
        row = budgets.charge(institution, event, history, now=utcnow())
        session.add(row)
        session.flush()
        results.append(("created", row))
    return results


def run_budget(*, session: Session, run_id: str, institution_id: int | None = None) -> RunBudget:
    query = select(PrivacyEvent).where(PrivacyEvent.run_id == run_id).order_by(PrivacyEvent.id)
    if institution_id is not None:
        query = query.where(PrivacyEvent.institution_id == institution_id)
    by_institution: dict[int, list[PrivacyEvent]] = {}
    for row in session.scalars(query):
        by_institution.setdefault(row.institution_id, []).append(row)
    if not by_institution:
        raise NotFound(f"no events recorded for run {run_id!r}")
    spending = []
    for inst_id, rows in by_institution.items():
        before = session.scalar(
            select(PrivacyEvent.epsilon_spent_after)
            .where(PrivacyEvent.institution_id == inst_id, PrivacyEvent.id < rows[0].id)
            .order_by(PrivacyEvent.id.desc())
            .limit(1)
        )
        spending.append(budgets.run_spending(rows, epsilon_before=before or 0.0))
    return RunBudget(run_id=run_id, institutions=sorted(spending, key=lambda s: s.institution))


def dashboard_data(*, session: Session, only: int | None, points: int) -> list[dict]:
    """Per institution: its budget figures and, for its last `points` events,
    (round over all runs, epsilon spent after it)."""
    out = []
    for institution in _institutions(session, only):
        rows = list(
            session.execute(
                select(PrivacyEvent.epsilon_spent_after)
                .where(PrivacyEvent.institution_id == institution.id)
                .order_by(PrivacyEvent.id.desc())
                .limit(points)
            ).scalars()
        )
        first = institution.rounds - len(rows) + 1
        out.append(
            {
                "id": institution.id,
                "name": institution.name,
                "limit": institution.epsilon_limit,
                "spent": institution.epsilon_spent,
                "delta": institution.delta,
                "rounds": institution.rounds,
                "flagged": institution.flagged_events,
                "points": [(first + i, eps) for i, eps in enumerate(reversed(rows))],
            }
        )
    return out


def ping(*, session: Session) -> str:
    """The database's dialect, after a round trip to it."""
    session.execute(text("SELECT 1"))
    return session.get_bind().dialect.name
