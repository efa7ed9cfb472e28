"""Institutions: registration (admin), their records, budgets and ledgers."""

from __future__ import annotations

from fastapi import APIRouter, Request, status

from server.budget import crud
from server.budget.api.deps import AdminPrincipal, CurrentPrincipal, LedgerDep, require_institution_access
from server.budget.limits import InstitutionId, PageLimit, PageOffset
from server.budget.schemas import (
    BudgetPublic,
    EventPage,
    InstitutionCreate,
    InstitutionCreated,
    InstitutionPublic,
    InstitutionToken,
    TokensRevoked,
)

router = APIRouter(prefix="/institutions", tags=["institutions"])


@router.post(
    "", status_code=status.HTTP_201_CREATED, responses={409: {"description": "An institution with that name exists"}}
)
async def create_institution(payload: InstitutionCreate, ledger: LedgerDep, _: AdminPrincipal) -> InstitutionCreated:
    """Register an institution. Its API token is in the reply, once; store it safely."""
    return await ledger.write(crud.create_institution, payload=payload)


@router.get("")
async def list_institutions(ledger: LedgerDep, _: AdminPrincipal) -> list[InstitutionPublic]:
    return await ledger.read(crud.list_institutions)


@router.get("/{institution_id}")
async def read_institution(
    institution_id: InstitutionId, ledger: LedgerDep, principal: CurrentPrincipal
) -> InstitutionPublic:
    require_institution_access(principal, institution_id)
    return await ledger.read(crud.read_institution, institution_id=institution_id)


@router.get("/{institution_id}/budget")
async def read_budget(institution_id: InstitutionId, ledger: LedgerDep, principal: CurrentPrincipal) -> BudgetPublic:
    """Spent, limit and remaining epsilon. `epsilon_spent` is max(recomputed from the ledger, highest reported)."""
    require_institution_access(principal, institution_id)
    return await ledger.read(crud.read_budget, institution_id=institution_id)


@router.get("/{institution_id}/events")
async def read_events(
    institution_id: InstitutionId,
    ledger: LedgerDep,
    principal: CurrentPrincipal,
    limit: PageLimit = 100,
    offset: PageOffset = 0,
) -> EventPage:
    """The institution's ledger, oldest first."""
    require_institution_access(principal, institution_id)
    return await ledger.read(crud.list_events, institution_id=institution_id, limit=limit, offset=offset)


@router.post("/{institution_id}/token", status_code=status.HTTP_201_CREATED)
async def rotate_institution_token(
    institution_id: InstitutionId, request: Request, ledger: LedgerDep, _: AdminPrincipal
) -> InstitutionToken:
    """Issue a new token for the institution (a rotated kit); every earlier one stops working. Shown once."""
    issued = await ledger.write(crud.rotate_institution_token, institution_id=institution_id)
    request.app.state.token_cache.clear()  # a revoked token must not live on in this process's cache
    return issued


@router.delete("/{institution_id}/tokens")
async def revoke_institution_tokens(
    institution_id: InstitutionId, request: Request, ledger: LedgerDep, _: AdminPrincipal
) -> TokensRevoked:
    """Disable every token of the institution (`fedcare institution revoke`). Its budget and ledger are kept."""
    revoked = await ledger.write(crud.revoke_institution_tokens, institution_id=institution_id)
    request.app.state.token_cache.clear()
    return revoked
