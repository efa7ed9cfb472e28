"""Budgets of every institution the caller may see, in one call (for the ServerApp before each round)."""

from __future__ import annotations

from fastapi import APIRouter

from server.budget import crud
from server.budget.api.deps import CurrentPrincipal, LedgerDep, visible_institution
from server.budget.schemas import BudgetPublic

router = APIRouter(tags=["budgets"])


@router.get("/budgets")
async def list_budgets(ledger: LedgerDep, principal: CurrentPrincipal) -> list[BudgetPublic]:
    """Admin and aggregators see every institution; an institution sees its own."""
    return await ledger.read(crud.list_budgets, only=visible_institution(principal))
