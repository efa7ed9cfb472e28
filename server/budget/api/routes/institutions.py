"""Institutions: registration (admin), their records, budgets and ledgers."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, status

from server.budget import crud
from server.budget.api.deps import AdminPrincipal, CurrentPrincipal, SessionDep, require_institution_access
from server.budget.models import BudgetPublic, EventPage, EventPublic, Institution, InstitutionCreate, InstitutionCreated, InstitutionPublic

router = APIRouter(prefix="/institutions", tags=["institutions"])


def _found(session, institution_id: int) -> Institution:
    institution = crud.get_institution(session=session, institution_id=institution_id)
    if institution is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"no institution with id {institution_id}")
    return institution


@router.post("", status_code=status.HTTP_201_CREATED, response_model=InstitutionCreated,
             responses={409: {"description": "An institution with that name exists"}})
def create_institution(payload: InstitutionCreate, session: SessionDep, _: AdminPrincipal) -> InstitutionCreated:
    """Register an institution. Its API token is in the reply, once; store it safely."""
    try:
        with session:
            institution, token = crud.create_institution(session=session, payload=payload)
            return InstitutionCreated(**InstitutionPublic.model_validate(institution).model_dump(), token=token)
    except crud.DuplicateName as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, detail=str(exc)) from None


@router.get("", response_model=list[InstitutionPublic])
def list_institutions(session: SessionDep, _: AdminPrincipal) -> list[InstitutionPublic]:
    with session:
        return [InstitutionPublic.model_validate(i) for i in crud.list_institutions(session=session)]


@router.get("/{institution_id}", response_model=InstitutionPublic)
def read_institution(institution_id: int, session: SessionDep, principal: CurrentPrincipal) -> InstitutionPublic:
    require_institution_access(principal, institution_id)
    with session:
        return InstitutionPublic.model_validate(_found(session, institution_id))


@router.get("/{institution_id}/budget", response_model=BudgetPublic)
def read_budget(institution_id: int, session: SessionDep, principal: CurrentPrincipal) -> BudgetPublic:
    """Spent, limit and remaining epsilon. `epsilon_spent` is max(recomputed from the ledger, highest reported)."""
    require_institution_access(principal, institution_id)
    with session:
        return crud.budget_of(_found(session, institution_id))


@router.get("/{institution_id}/events", response_model=EventPage)
def read_events(
    institution_id: int, session: SessionDep, principal: CurrentPrincipal,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100, offset: Annotated[int, Query(ge=0)] = 0,
) -> EventPage:
    """The institution's ledger, oldest first."""
    require_institution_access(principal, institution_id)
    with session:
        _found(session, institution_id)
        rows, total = crud.list_events(session=session, institution_id=institution_id, limit=limit, offset=offset)
        return EventPage(items=[EventPublic.of(r) for r in rows], total=total, limit=limit, offset=offset,
                         next_offset=offset + len(rows) if offset + len(rows) < total else None)
