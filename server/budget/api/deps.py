"""Request dependencies: the ledger (database work) and who is calling.

Routes are `async` and hand their database work to `LedgerDep.read` or `.write`, which
runs it in one trip through the thread pool with a session opened and closed
in that thread. Two reasons, both measured: a sync FastAPI route with a
response model costs two trips through the pool (the route, then validating
its reply), about 170 µs of CPU each on these machines; and a session kept
open until FastAPI has serialized the reply holds its connection while
waiting for a thread, which deadlocks under load once every thread waits for
a connection.
"""

from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import Callable
from typing import Annotated, Any, TypeVar

import anyio
import anyio.to_thread
from fastapi import Depends, HTTPException, Request, status
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool

from server.budget import crud
from server.budget.api.browser import LOGIN_PATH, current_session
from server.budget.core.errors import LedgerError
from server.budget.core.group_commit import GroupCommit
from server.budget.core.security import Principal, Role, hash_token, same_digest
from server.budget.limits import MAX_TOKEN_LENGTH
from server.budget.schemas import EventCreate, EventsWritten

MAX_GROUP_EVENTS = 2000  # events committed together at most
T = TypeVar("T")


class Ledger:
    """Runs one unit of database work in a worker thread, with its own session.

    On SQLite, writes of this process also queue on a lock before BEGIN
    IMMEDIATE: SQLite's busy handler makes waiting writers sleep in growing
    steps (up to 100 ms), which spreads the latency of concurrent writers far
    more than a queue does. Writers in other processes still use the busy timeout.
    Reads may use other sessions (PostgreSQL: autocommit, one round trip per
    query instead of BEGIN, query, ROLLBACK).
    """

    def __init__(
        self,
        sessions: sessionmaker[Session],
        *,
        read_sessions: sessionmaker[Session] | None = None,
        serialize_writes: bool = False,
        write_threads: int = 2,
    ) -> None:
        self._sessions, self._read_sessions = sessions, read_sessions or sessions
        self._write_lock = threading.Lock() if serialize_writes else contextlib.nullcontext()
        self._write_threads = write_threads
        self._write_limiter: anyio.CapacityLimiter | None = None  # made in the event loop, on first use
        self._group_commit: GroupCommit[EventCreate, EventsWritten] | None = None

    def read_here(self, work: Callable[..., T], /, **kwargs: Any) -> T:
        with self._read_sessions() as session:
            return work(session=session, **kwargs)

    def write_here(self, work: Callable[..., T], /, **kwargs: Any) -> T:
        with self._write_lock, self._sessions() as session:
            return work(session=session, **kwargs)

    async def read(self, work: Callable[..., T], /, **kwargs: Any) -> T:
        """`await ledger.read(crud.read_budget, institution_id=3)`: crud functions take `session=` and keywords."""
        return await run_in_threadpool(self.read_here, work, **kwargs)

    async def write(self, work: Callable[..., T], /, **kwargs: Any) -> T:
        """Like `read`, for work that writes.

        Writers have threads of their own, so a slow write never holds up reads."""
        if self._write_limiter is None:
            self._write_limiter = anyio.CapacityLimiter(self._write_threads)
        return await anyio.to_thread.run_sync(
            functools.partial(self.write_here, work, **kwargs), limiter=self._write_limiter
        )

    async def write_events(self, events: list[EventCreate]) -> EventsWritten:
        """Store one request's events, committed together with whatever other requests are waiting."""
        if self._group_commit is None:
            self._group_commit = GroupCommit(self._write_batches, max_items=MAX_GROUP_EVENTS)
        return await self._group_commit.submit(events)

    async def _write_batches(self, batches: list[list[EventCreate]]) -> list[EventsWritten | LedgerError]:
        return await self.write(crud.record_batches, batches=batches)

    async def aclose(self) -> None:
        if self._group_commit is not None:
            await self._group_commit.aclose()


async def get_ledger(request: Request) -> Ledger:
    return request.app.state.ledger


LedgerDep = Annotated[Ledger, Depends(get_ledger)]


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


async def resolve_digest(request: Request, digest: str) -> Principal | None:
    """Who holds the token with this SHA-256 digest, or None when no live token has it."""
    state = request.app.state
    if same_digest(digest, state.admin_digest):
        return Principal(role=Role.admin, name="admin")
    principal = state.token_cache.get(digest)  # a known token costs no database work
    if principal is None:
        principal = await state.ledger.read(crud.principal_for_digest, digest=digest)
        if principal is None:
            return None
        state.token_cache.put(digest, principal)
    return principal


async def resolve_token(request: Request, token: str) -> Principal:
    if len(token) > MAX_TOKEN_LENGTH:
        raise _unauthorized(
            f"the token is {len(token)} characters long; fedcare tokens have at most {MAX_TOKEN_LENGTH}"
        )
    principal = await resolve_digest(request, hash_token(token))
    if principal is None:
        raise _unauthorized("unknown or invalid token")
    return principal


async def get_principal(request: Request) -> Principal:
    token = _bearer(request)
    if token is None:
        raise _unauthorized("no token: send 'Authorization: Bearer <token>'")
    return await resolve_token(request, token)


CurrentPrincipal = Annotated[Principal, Depends(get_principal)]


def _to_sign_in(detail: str) -> HTTPException:
    return HTTPException(status.HTTP_303_SEE_OTHER, detail=detail, headers={"Location": LOGIN_PATH})


async def get_viewer(request: Request) -> Principal:
    """For the HTML dashboard: a bearer header (scripts), or the session a sign-in at /dashboard/login made.

    A token in the URL is never used, not even checked: the request is sent to the sign-in page. A browser
    without a session is sent there too; anything else gets 401."""
    if "token" in request.query_params:
        raise _to_sign_in(f"tokens never go in a URL (they end up in histories and logs): sign in at {LOGIN_PATH}")
    token = _bearer(request)
    if token is not None:
        return await resolve_token(request, token)
    found = await current_session(request)
    principal = None if found is None else await resolve_digest(request, found[1].token_hash)
    if principal is None:
        detail = f"no token or session: sign in at {LOGIN_PATH}, or send 'Authorization: Bearer <token>'"
        if "text/html" in request.headers.get("accept", ""):
            raise _to_sign_in(detail)
        raise _unauthorized(detail)
    request.state.logout_csrf = found[1].csrf
    return principal


CurrentViewer = Annotated[Principal, Depends(get_viewer)]


def require(principal: Principal, *roles: Role) -> None:
    if principal.role not in roles:
        allowed = " or ".join(r.value for r in roles)
        raise HTTPException(
            status.HTTP_403_FORBIDDEN, detail=f"this needs the {allowed} role; you are {principal.role.value}"
        )


def require_institution_access(principal: Principal, institution_id: int) -> None:
    if not principal.may_read_institution(institution_id):
        refuse_other_institution(principal)


def refuse_other_institution(principal: Principal) -> None:
    """403 for an institution's token that asked for another institution's records; nothing for the others."""
    if principal.role == Role.institution:
        raise HTTPException(
            status.HTTP_403_FORBIDDEN,
            detail=f"an institution may read only its own records; this token belongs to {principal.name!r}",
        )


async def admin_only(principal: CurrentPrincipal) -> Principal:
    require(principal, Role.admin)
    return principal


AdminPrincipal = Annotated[Principal, Depends(admin_only)]


def visible_institution(principal: Principal) -> int | None:
    """The one institution an institution's token may see; None for the admin and aggregators (all)."""
    return principal.institution_id if principal.role == Role.institution else None
