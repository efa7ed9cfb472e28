"""An HTML page plotting epsilon spent per institution over rounds, against each one's limit.

Self-contained: the data is embedded server-side and an inline script draws
SVG, so the page loads nothing from any other host (a Content-Security-Policy
with a per-response nonce enforces that). People sign in at `/dashboard/login`
(`dashboard_login.py`) and the page then rides on a session cookie; scripts may
send a bearer header instead. No token is ever read from, or written into, a URL.
The admin and aggregators see every institution, an institution only itself.
"""

from __future__ import annotations

import json
import secrets
from datetime import UTC, datetime
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse

from server.budget import crud
from server.budget.api.browser import page_headers
from server.budget.api.deps import CurrentViewer, Ledger, LedgerDep, visible_institution
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
        "viewer_name": viewer.name,
        "institutions": institutions,
    }


@router.get("/dashboard", response_class=HTMLResponse)
async def dashboard(request: Request, ledger: LedgerDep, viewer: CurrentViewer) -> HTMLResponse:
    """Epsilon spent per institution over rounds (all runs, in the order received), with each limit dashed."""
    nonce = secrets.token_urlsafe(16)
    data = json.dumps(await _data(request, ledger, viewer), allow_nan=False).replace("<", "\\u003c")
    csrf = getattr(request.state, "logout_csrf", "")  # none when a bearer header, not a session, signed this in
    page = (
        PAGE.replace("__NONCE__", nonce)
        .replace("__CSRF__", csrf)
        .replace("__SIGNOUT_CLASS__", "" if csrf else "hidden")
        .replace("__DATA__", data)
    )
    return HTMLResponse(page, headers=page_headers(nonce, connect=True))


@router.get("/dashboard/data", response_class=JSONResponse)
async def dashboard_json(request: Request, ledger: LedgerDep, viewer: CurrentViewer) -> JSONResponse:
    """The dashboard's data; the page refreshes itself from here."""
    return JSONResponse(await _data(request, ledger, viewer), headers={"Cache-Control": "no-store"})
