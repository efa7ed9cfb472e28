"""Liveness and Prometheus metrics (unversioned, like most services expose them)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.concurrency import run_in_threadpool

from server.budget import crud
from server.budget.api.deps import CurrentPrincipal, LedgerDep, require
from server.budget.core import accounting
from server.budget.core.security import Role
from server.budget.schemas import Health

router = APIRouter(tags=["service"])


@router.get("/healthz")
async def healthz(request: Request, ledger: LedgerDep) -> Health:
    """200 when the service can reach its database."""
    return Health(
        status="ok",
        database=await ledger.read(crud.ping),
        version=request.app.version,
        accounting="ready" if accounting.is_warm() else "warming",
    )


@router.get("/metrics", response_class=Response, responses={200: {"content": {"text/plain": {}}}})
async def metrics(request: Request, principal: CurrentPrincipal) -> Response:
    """Prometheus text format: request latencies, event writes, and epsilon spent and limit per institution.

    It names every institution's spending, so it needs an admin or aggregator bearer token
    (Prometheus: `authorization: {credentials: ...}` in the scrape config).
    """
    require(principal, Role.admin, Role.aggregator)
    text = await run_in_threadpool(generate_latest, request.app.state.metrics.registry)  # reads the database
    return Response(text, media_type=CONTENT_TYPE_LATEST)
