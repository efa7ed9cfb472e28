"""Request dependencies: the ledger (database work) and who is calling.

Routes are `async` and hand their database work to `LedgerDep.run`, which
runs it in one trip through the thread pool with a session opened and closed
in that thread. Two reasons, both measured: a sync FastAPI route with a
response model costs two trips through the pool (the route, then validating
its reply), about 170 µs of CPU each on these machines; and a session kept
open until FastAPI has serialized the reply holds its connection while
waiting for a thread, which deadlocks under load once every thread waits for
a connection.
"""

from __future__ import annotations

import asyncio
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
from server.budget.core.security import Principal, Role, hash_token, same_digest
from server.budget.models import EventCreate, EventsWritten

DASHBOARD_COOKIE = "fedcare_budget_token"
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
        self._event_queue: asyncio.Queue | None = None
        self._event_loop: asyncio.AbstractEventLoop | None = None
        self._group_task: asyncio.Task | None = None

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
        """Store one request's events, committed together with whatever other requests are waiting (group commit).

        A durable commit costs an fsync, so concurrent writers share one: while a
        group is being committed the next requests queue, and the next group takes
        them all. Each request still gets its answer only after its events are committed.
        """
        loop = asyncio.get_running_loop()
        if self._event_queue is None or self._event_loop is not loop:
            self._event_queue, self._event_loop = asyncio.Queue(), loop
            self._group_task = loop.create_task(
                self._commit_groups(self._event_queue), name="fedcare-budget-group-commit"
            )
        answer: asyncio.Future = loop.create_future()
        self._event_queue.put_nowait((events, answer))
        return await answer

    async def aclose(self) -> None:
        if self._group_task is not None:
            self._group_task.cancel()
            self._group_task = None
            self._event_queue = None

    async def _commit_groups(self, queue: asyncio.Queue) -> None:
        while True:
            group = [await queue.get()]
            size = len(group[0][0])
            while not queue.empty() and size < MAX_GROUP_EVENTS:
                group.append(queue.get_nowait())
                size += len(group[-1][0])
            try:
                results = await self.write(crud.record_batches, batches=[events for events, _ in group])
            except Exception as exc:  # noqa: BLE001 - every waiting request gets the error (a 500; clients retry)
                results = [exc] * len(group)
            for (_, answer), result in zip(group, results, strict=False):
                if answer.done():  # the request was cancelled (client gone)
                    continue
                if isinstance(result, BaseException):
                    answer.set_exception(result)
                else:
                    answer.set_result(result)


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


async def resolve_token(request: Request, token: str) -> Principal:
    state = request.app.state
    digest = hash_token(token)
    if same_digest(digest, state.admin_digest):
        return Principal(role=Role.admin, name="admin")
    principal = state.token_cache.get(digest)  # a known token costs no database work
    if principal is None:
        principal = await state.ledger.read(crud.principal_for_digest, digest=digest)
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
        raise HTTPException(
            status.HTTP_403_FORBIDDEN, detail=f"this needs the {allowed} role; you are {principal.role.value}"
        )


def require_institution_access(principal: Principal, institution_id: int) -> None:
    if not principal.may_read_institution(institution_id):
        raise HTTPException(status.HTTP_403_FORBIDDEN, detail="an institution may read only its own records")


async def admin_only(principal: CurrentPrincipal) -> Principal:
    require(principal, Role.admin)
    return principal


AdminPrincipal = Annotated[Principal, Depends(admin_only)]


def visible_institution(principal: Principal) -> int | None:
    """The one institution an institution's token may see; None for the admin and aggregators (all)."""
    return principal.institution_id if principal.role == Role.institution else None
