"""Spending per institution within one federated run."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, status

from server.budget import crud
from server.budget.api.deps import CurrentPrincipal, SessionDep
from server.budget.core.security import Role
from server.budget.models import RunBudget

router = APIRouter(prefix="/runs", tags=["runs"])


@router.get("/{run_id}/budget", response_model=RunBudget)
def read_run_budget(run_id: str, session: SessionDep, principal: CurrentPrincipal) -> RunBudget:
    """Epsilon before, after and spent in the run, per institution. An institution sees only its own line."""
    only = principal.institution_id if principal.role == Role.institution else None
    with session:
        budget = crud.run_budget(session=session, run_id=run_id, institution_id=only)
    if budget is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"no events recorded for run {run_id!r}")
    return budget
