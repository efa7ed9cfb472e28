"""Aggregator tokens (for the ServerApp), issued by the admin."""

from __future__ import annotations

from fastapi import APIRouter, status

from server.budget import crud
from server.budget.api.deps import AdminPrincipal, LedgerDep
from server.budget.schemas import AggregatorCreate, AggregatorCreated

router = APIRouter(prefix="/aggregators", tags=["aggregators"])


@router.post("", status_code=status.HTTP_201_CREATED)
async def create_aggregator(payload: AggregatorCreate, ledger: LedgerDep, _: AdminPrincipal) -> AggregatorCreated:
    """Issue a token that may post events and read every budget. Shown once; only its hash is stored."""
    return await ledger.write(crud.create_aggregator, name=payload.name)
