"""Request dependencies: the database session and who is calling.

They are `async` on purpose: a sync dependency costs a trip through the
thread pool each, and these do no blocking work on the common path (a
session is opened lazily by the route; a known token is in the cache).
Blocking work (a token lookup on a cache miss, closing a PostgreSQL session)
goes to the thread pool.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from server.budget import crud
from server.budget.core.security import Principal, Role, hash_token, same_digest

DASHBOARD_COOKIE = "fedcare_budget_token"


async def get_db(request: Request) -> AsyncIterator[Session]:
    """A session for the route, which closes it (`with session:`) before returning.

    Closing inside the route matters: FastAPI serializes a sync route's reply in
    the thread pool, so a connection still held then would wait for a thread
    while the threads wait for connections, a deadlock under load.
    """
    session = request.app.state.sessions()  # connects only when the route first uses it
    try:
        yield session
    finally:
        session.close()  # normally a no-op: the route closed it already


SessionDep = Annotated[Session, Depends(get_db)]


def _unauthorized(detail: str) -> HTTPException:
    return HTTPException(status.HTTP_401_UNAUTHORIZED, detail=detail, headers={"WWW-Authenticate": "Bearer"})


def _bearer(request: Request) -> str | None:
    header = request.headers.get("authorization")
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise _unauthorized("the Authorization header must be 'Bearer <token>'")
    return token.strip()


def _lookup(request: Request, digest: str) -> Principal | None:
    with request.app.state.sessions() as session:
        return crud.principal_for_digest(session=session, digest=digest)


async def resolve_token(request: Request, token: str) -> Principal:
    state = request.app.state
    digest = hash_token(token)
    if same_digest(digest, state.admin_digest):
        return Principal(role=Role.admin, name="admin")
    principal = state.token_cache.get(digest)
    if principal is None:
        principal = await run_in_threadpool(_lookup, request, digest)
        if principal is None:
            raise _unauthorized("unknown or invalid token")
        state.token_cache.put(digest, principal)
    return principal


async def get_principal(request: Request) -> Principal:
    token = _bearer(request)
    if token is None:
        raise _unauthorized("no token: send 'Authorization: Bearer <token>'")
    return await resolve_token(request, token)


CurrentPrincipal = Annotated[Principal, Depends(get_principal)]


async def get_viewer(request: Request) -> Principal:
    """For the HTML dashboard: a bearer header, the `token` query parameter, or the cookie it sets."""
    token = _bearer(request) or request.query_params.get("token") or request.cookies.get(DASHBOARD_COOKIE)
    if not token:
        raise _unauthorized("no token: open /dashboard?token=<your token> once; a cookie keeps you signed in")
    return await resolve_token(request, token)


CurrentViewer = Annotated[Principal, Depends(get_viewer)]


def require(principal: Principal, *roles: Role) -> None:
    if principal.role not in roles:
        allowed = " or ".join(r.value for r in roles)
        raise HTTPException(status.HTTP_403_FORBIDDEN, detail=f"this needs the {allowed} role; you are {principal.role.value}")


def require_institution_access(principal: Principal, institution_id: int) -> None:
    if not principal.may_read_institution(institution_id):
        raise HTTPException(status.HTTP_403_FORBIDDEN, detail="an institution may read only its own records")


async def admin_only(principal: CurrentPrincipal) -> Principal:
    require(principal, Role.admin)
    return principal


AdminPrincipal = Annotated[Principal, Depends(admin_only)]
