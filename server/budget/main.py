"""The budget service's FastAPI app: `create_app(settings)`; `uvicorn server.budget.main:app` uses the environment."""

from __future__ import annotations

import logging
import threading
from contextlib import asynccontextmanager
from typing import Any

import anyio.to_thread
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DataError
from starlette.status import HTTP_422_UNPROCESSABLE_CONTENT

from server.budget.api.deps import Ledger
from server.budget.api.main import api_router, site_router
from server.budget.core import accounting
from server.budget.core.config import BudgetSettings, get_settings
from server.budget.core.db import make_engine, make_sessionmaker, upgrade_schema
from server.budget.core.errors import LedgerError, ValueOutOfRange
from server.budget.core.metrics import BudgetMetrics, LatencyMiddleware
from server.budget.core.security import TokenCache, hash_token

log = logging.getLogger("fedcare.budget")
VERSION = "1.0.0"


def _where(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path")]
    out = ""
    for p in parts:
        out += f"[{p}]" if p.isdigit() else (f".{p}" if out else p)
    return out or "request"


def describe_validation_error(exc: RequestValidationError) -> str:
    """One line a person can act on: `events[2].delta: Input should be less than 1 (got 1.5)`."""
    messages = []
    for err in exc.errors()[:10]:
        msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
        if err.get("type") == "json_invalid":
            messages.append(f"body: {msg} at character {err.get('loc', ('', '?'))[-1]}")
            continue
        got = f" (got {err['input']!r})" if "input" in err and not isinstance(err["input"], (dict, list)) else ""
        where = _where(tuple(err.get("loc", ())))
        if where.startswith("[") or where == "request":
            where = "events" + where if where != "request" else where
        messages.append(f"{where}: {msg}{got}")
    return "; ".join(messages)


async def _ledger_error(request: Request, exc: LedgerError) -> JSONResponse:
    return JSONResponse(status_code=exc.status_code, content={"detail": str(exc)})


async def _value_out_of_range(request: Request, exc: Exception) -> JSONResponse:
    """A value the database cannot hold (the limits should refuse it first): the caller's error, never a 500."""
    return await _ledger_error(request, ValueOutOfRange.of(exc))


async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    return JSONResponse(
        status_code=HTTP_422_UNPROCESSABLE_CONTENT,
        content={"detail": describe_validation_error(exc), "errors": jsonable_errors(exc)},
    )


def jsonable_errors(exc: RequestValidationError) -> list[dict[str, Any]]:
    return [{"loc": list(e.get("loc", ())), "msg": e.get("msg"), "type": e.get("type")} for e in exc.errors()]


def create_app(settings: BudgetSettings | None = None) -> FastAPI:
    """The app, its database migrated to the newest schema."""
    settings = settings or get_settings()
    engine = make_engine(settings)
    upgrade_schema(engine)
    sessions = make_sessionmaker(engine)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        # Few threads, each with a connection: dozens of threads fighting over the GIL serve fewer requests, not more.
        anyio.to_thread.current_default_thread_limiter().total_tokens = settings.read_threads
        # Opacus (and torch) take seconds to import; do it now rather than in the first write.
        threading.Thread(target=accounting.warm_up, name="opacus-warm-up", daemon=True).start()
        yield
        await app.state.ledger.aclose()
        engine.dispose()

    app = FastAPI(
        title="fedcare privacy budget service",
        version=VERSION,
        description="A ledger of every hospital's differential-privacy spending, which the federation obeys.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.engine = engine
    app.state.sessions = sessions
    read_sessions = (
        None if settings.is_sqlite else make_sessionmaker(engine.execution_options(isolation_level="AUTOCOMMIT"))
    )
    app.state.ledger = Ledger(
        sessions, read_sessions=read_sessions, serialize_writes=settings.is_sqlite, write_threads=settings.write_threads
    )
    app.state.admin_digest = hash_token(settings.admin_token.get_secret_value())
    app.state.token_cache = TokenCache(settings.token_cache_seconds)
    app.state.metrics = metrics = BudgetMetrics(sessions)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(LedgerError, _ledger_error)
    for database_refused in (DataError, OverflowError):
        app.add_exception_handler(database_refused, _value_out_of_range)
    app.add_middleware(
        LatencyMiddleware,
        observe=lambda m, route, status, seconds: metrics.requests.labels(m, route, str(status)).observe(seconds),
    )
    app.include_router(api_router)
    app.include_router(site_router)
    log.info("budget service ready on %s", engine.url.render_as_string(hide_password=True))
    return app


def __getattr__(name: str) -> FastAPI:
    """`uvicorn server.budget.main:app` builds the app from the environment on first access."""
    if name == "app":
        global app
        app = create_app()
        return app
    raise AttributeError(name)
