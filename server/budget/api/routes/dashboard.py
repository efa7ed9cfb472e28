"""An HTML page plotting epsilon spent per institution over rounds, against each one's limit.

Self-contained: the data is embedded server-side and an inline script draws
SVG, so the page loads nothing from any other host (a Content-Security-Policy
with a per-response nonce enforces that). Sign-in is for people with a
browser: open `/dashboard?token=<token>` once; the token is kept in an
HttpOnly, SameSite=Strict cookie and the script removes it from the address
bar. The admin and aggregators see every institution, an institution itself.
"""

from __future__ import annotations

import json
import secrets
from datetime import UTC, datetime
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse

from server.budget import crud
from server.budget.api.deps import DASHBOARD_COOKIE, CurrentViewer, Ledger, LedgerDep, visible_institution
from server.budget.core.security import Principal

router = APIRouter(tags=["dashboard"])
PAGE = (Path(__file__).resolve().parents[2] / "templates" / "dashboard.html").read_text()


async def _data(request: Request, ledger: Ledger, viewer: Principal) -> dict:
    institutions = await ledger.read(
        crud.dashboard_data, only=visible_institution(viewer), points=request.app.state.settings.dashboard_points
    )
    return {
        "generated_at": datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S"),
        "viewer": viewer.role.value,
        "institutions": institutions,
    }


def _with_cookie(request: Request, response, token_from_query: str | None):
    # Only a token that signed this request in (no bearer header beside it) becomes the cookie: any other
    # query text could be anything, including characters a Set-Cookie header cannot carry.
    if token_from_query and not request.headers.get("authorization"):
        response.set_cookie(
            DASHBOARD_COOKIE,
            token_from_query,
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
            max_age=8 * 3600,
            path="/dashboard",
        )
    return response


@router.get("/dashboard", response_class=HTMLResponse)
async def dashboard(request: Request, ledger: LedgerDep, viewer: CurrentViewer) -> HTMLResponse:
    """Epsilon spent per institution over rounds (all runs, in the order received), with each limit dashed."""
    nonce = secrets.token_urlsafe(16)
    data = json.dumps(await _data(request, ledger, viewer), allow_nan=False).replace("<", "\\u003c")
    page = PAGE.replace("__NONCE__", nonce).replace("__DATA__", data)
    response = HTMLResponse(
        page,
        headers={
            "Content-Security-Policy": f"default-src 'none'; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; "
            "connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'",
            "Cache-Control": "no-store",
            "Referrer-Policy": "no-referrer",
        },
    )
    return _with_cookie(request, response, request.query_params.get("token"))


@router.get("/dashboard/data", response_class=JSONResponse)
async def dashboard_json(request: Request, ledger: LedgerDep, viewer: CurrentViewer) -> JSONResponse:
    """The dashboard's data; the page refreshes itself from here."""
    return JSONResponse(await _data(request, ledger, viewer), headers={"Cache-Control": "no-store"})
