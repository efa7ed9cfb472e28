"""Budgets of every institution the caller may see, in one call (for the ServerApp before each round)."""

from __future__ import annotations

from fastapi import APIRouter

from server.budget import crud
from server.budget.api.deps import CurrentPrincipal, LedgerDep, refuse_other_institution, visible_institution
from server.budget.core.errors import NotFound
from server.budget.limits import InstitutionNameQuery
from server.budget.schemas import BudgetPublic

router = APIRouter(tags=["budgets"])


@router.get("/budgets", responses={403: {"description": "An institution's token asked for another institution"}})
async def list_budgets(
    ledger: LedgerDep, principal: CurrentPrincipal, institution: InstitutionNameQuery = None
) -> list[BudgetPublic]:
    """Admin and aggregators see every institution; an institution sees its own. `?institution=NAME`: that one only."""
    found = await ledger.read(crud.list_budgets, only=visible_institution(principal), name=institution)
    if institution is not None and not found:
        refuse_other_institution(principal)  # 403 whether or not the name exists: a token learns nothing of others
        raise NotFound(f"no institution named {institution!r}")
    return found
