"""The versioned API router (/v1) and the unversioned pages."""

from __future__ import annotations

from fastapi import APIRouter

from server.budget.api.routes import (
    aggregators,
    budgets,
    dashboard,
    dashboard_login,
    events,
    institutions,
    runs,
    service,
)

api_router = APIRouter(prefix="/v1")
for module in (institutions, budgets, events, runs, aggregators):
    api_router.include_router(module.router)

site_router = APIRouter()
site_router.include_router(service.router)
site_router.include_router(dashboard.router)
site_router.include_router(dashboard_login.router)
