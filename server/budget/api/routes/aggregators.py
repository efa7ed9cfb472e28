"""Aggregator tokens (for the ServerApp), issued by the admin."""

from __future__ import annotations

from fastapi import APIRouter, status

from server.budget import crud
from server.budget.api.deps import AdminPrincipal, SessionDep
from server.budget.models import AggregatorCreate, AggregatorCreated

router = APIRouter(prefix="/aggregators", tags=["aggregators"])


@router.post("", status_code=status.HTTP_201_CREATED, response_model=AggregatorCreated)
def create_aggregator(payload: AggregatorCreate, session: SessionDep, _: AdminPrincipal) -> AggregatorCreated:
    """Issue a token that may post events and read every budget. Shown once; only its hash is stored."""
    with session:
        row, token = crud.create_aggregator(session=session, name=payload.name)
        return AggregatorCreated(id=row.id, name=row.name, token=token)
