"""Liveness and Prometheus metrics (unversioned, like most services expose them)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text

from server.budget.api.deps import CurrentPrincipal, SessionDep, require
from server.budget.core.security import Role
from server.budget.models import Health

router = APIRouter(tags=["service"])


@router.get("/healthz", response_model=Health)
def healthz(request: Request, session: SessionDep) -> Health:
    """200 when the service can reach its database."""
    with session:
        session.execute(text("SELECT 1"))
        return Health(status="ok", database=session.get_bind().dialect.name, version=request.app.version)


@router.get("/metrics", response_class=Response, responses={200: {"content": {"text/plain": {}}}})
def metrics(request: Request, principal: CurrentPrincipal) -> Response:
    """Prometheus text format: request latencies, event writes, and epsilon spent and limit per institution.

    It names every institution's spending, so it needs an admin or aggregator bearer token
    (Prometheus: `authorization: {credentials: ...}` in the scrape config).
    """
    require(principal, Role.admin, Role.aggregator)
    return Response(generate_latest(request.app.state.metrics.registry), media_type=CONTENT_TYPE_LATEST)
