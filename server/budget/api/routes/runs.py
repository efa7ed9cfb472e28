"""Spending per institution within one federated run."""

from __future__ import annotations

from fastapi import APIRouter

from server.budget import crud
from server.budget.api.deps import CurrentPrincipal, LedgerDep, visible_institution
from server.budget.limits import RunId
from server.budget.schemas import RunBudget

router = APIRouter(prefix="/runs", tags=["runs"])


@router.get("/{run_id}/budget", responses={404: {"description": "No events recorded for this run"}})
async def read_run_budget(run_id: RunId, ledger: LedgerDep, principal: CurrentPrincipal) -> RunBudget:
    """Epsilon before, after and spent in the run, per institution. An institution sees only its own line."""
    return await ledger.read(crud.run_budget, run_id=run_id, institution_id=visible_institution(principal))
