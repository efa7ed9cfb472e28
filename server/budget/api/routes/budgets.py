"""Budgets of every institution the caller may see, in one call (for the ServerApp before each round)."""

from __future__ import annotations

from fastapi import APIRouter

from server.budget import crud
from server.budget.api.deps import CurrentPrincipal, SessionDep
from server.budget.core.security import Role
from server.budget.models import BudgetPublic

router = APIRouter(tags=["budgets"])


@router.get("/budgets", response_model=list[BudgetPublic])
def list_budgets(session: SessionDep, principal: CurrentPrincipal) -> list[BudgetPublic]:
    """Admin and aggregators see every institution; an institution sees its own."""
    with session:
        institutions = crud.list_institutions(session=session)
        if principal.role == Role.institution:
            institutions = [i for i in institutions if i.id == principal.institution_id]
        return [crud.budget_of(i) for i in institutions]

