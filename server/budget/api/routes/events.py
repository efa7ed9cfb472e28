"""Posting DP events (aggregators, i.e. the ServerApp; and the admin)."""

from __future__ import annotations

from fastapi import APIRouter, Body, Request

from server.budget.api.deps import CurrentPrincipal, LedgerDep, require
from server.budget.core.security import Role
from server.budget.schemas import EventBatch, EventsWritten

router = APIRouter(tags=["events"])


@router.post("/events", responses={422: {"description": "An invalid event, or one naming an unknown institution"}})
async def post_events(
    request: Request,
    ledger: LedgerDep,
    principal: CurrentPrincipal,
    batch: EventBatch = Body(description="One event object or a list of up to 1000"),
) -> EventsWritten:
    """Store DP events, idempotently on (run_id, server_round, institution).

    A retry with the same key never adds a row nor changes the stored one: it
    comes back as `duplicate` (same numbers) or `conflict` (other numbers;
    the stored event stands). A batch is stored whole or not at all.
    """
    require(principal, Role.aggregator, Role.admin)
    written = await ledger.write_events(batch.root)
    counter = request.app.state.metrics.event_writes
    for outcome, n in (
        ("created", written.created),
        ("duplicate", written.duplicates),
        ("conflict", written.conflicts),
    ):
        if n:
            counter.labels(outcome).inc(n)
    return written
