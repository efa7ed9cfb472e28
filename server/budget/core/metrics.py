"""Prometheus metrics: request latencies (middleware), event writes, and the ledger's state per institution.

Per-institution figures are read from the database at scrape time, so they
are right after a restart and whichever process serves the scrape. Each app
has its own registry, so several apps can live in one process (tests). With
several uvicorn workers (`PROMETHEUS_MULTIPROC_DIR` set, as `fedcare budget
serve --workers N` does), request and write counts are summed over the
workers by prometheus_client's multiprocess collector.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Histogram, multiprocess
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker
from starlette.types import ASGIApp, Receive, Scope, Send

from server.budget.models import Institution

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class LedgerCollector:
    """Events stored, and epsilon spent / limit per institution, from the database."""

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self._sessions = sessions

    def collect(self):
        events = CounterMetricFamily("fedcare_budget_events_stored", "DP events in the ledger", labels=["institution"])
        spent = GaugeMetricFamily(
            "fedcare_budget_epsilon_spent", "Epsilon spent (max of recomputed and reported)", labels=["institution"]
        )
        limit = GaugeMetricFamily("fedcare_budget_epsilon_limit", "Lifetime epsilon limit", labels=["institution"])
        flagged = GaugeMetricFamily(
            "fedcare_budget_flagged_events", "Events whose report disagreed with the ledger", labels=["institution"]
        )
        with self._sessions() as session:
            rows = session.execute(
                select(
                    Institution.name,
                    Institution.rounds,
                    Institution.epsilon_spent,
                    Institution.epsilon_limit,
                    Institution.flagged_events,
                )
            )
            for name, rounds, eps, lim, flags in rows:
                events.add_metric([name], rounds)
                spent.add_metric([name], eps)
                limit.add_metric([name], lim)
                flagged.add_metric([name], flags)
        yield from (events, spent, limit, flagged)


class BudgetMetrics:
    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self.registry = CollectorRegistry()
        shared = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
        if shared:  # values live in files shared by the workers; this registry reads them all
            multiprocess.MultiProcessCollector(self.registry)
        own = None if shared else self.registry
        self.requests = Histogram(
            "fedcare_budget_request_duration_seconds",
            "HTTP request latency",
            ["method", "route", "status"],
            buckets=LATENCY_BUCKETS,
            registry=own,
        )
        self.event_writes = Counter(
            "fedcare_budget_event_writes",
            "Events posted, by outcome (created, duplicate, conflict)",
            ["outcome"],
            registry=own,
        )
        self.registry.register(LedgerCollector(sessions))


class LatencyMiddleware:
    """Pure ASGI middleware (cheaper than BaseHTTPMiddleware) timing every HTTP request by route template."""

    def __init__(self, app: ASGIApp, *, observe: Callable[[str, str, int, float], None]) -> None:
        self.app, self.observe = app, observe

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start, status = time.perf_counter(), 500

        async def send_with_status(message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_with_status)
        finally:
            self.observe(scope["method"], route_template(scope), status, time.perf_counter() - start)


def route_template(scope: Scope) -> str:
    """`/v1/institutions/{institution_id}/budget`, not the concrete path (which would explode the label set).

    Routes of included routers know only their own part of the template, so the
    router prefixes are taken back from the concrete path.
    """
    template = getattr(scope.get("route"), "path", None)
    if template is None:
        return "unmatched"
    path_parts = scope["path"].rstrip("/").split("/")
    template_parts = template.rstrip("/").split("/")
    prefix = path_parts[: max(1, len(path_parts) - len(template_parts) + 1)]
    return "/".join(prefix + template_parts[1:]) or "/"
