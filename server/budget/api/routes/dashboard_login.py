"""Signing in to the dashboard with a form, and out again.

The token travels once, in the body of a POST; the browser then holds only a session cookie
(`__Host-`, Secure, HttpOnly, SameSite=Strict) naming a row of `dashboard_sessions`. Both forms
carry a CSRF token: the sign-in form's is also in a cookie (double submit), the sign-out form's is
bound to the session. A wrong token gets 401 and the form again; the token itself is never logged.
"""

from __future__ import annotations

import html
import logging
import secrets
from pathlib import Path

from fastapi import APIRouter, HTTPException, Request, status
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from server.budget.api.browser import (
    LOGIN_COOKIE,
    LOGIN_PATH,
    SESSION_COOKIE,
    clear_cookie,
    current_session,
    from_elsewhere,
    page_headers,
    read_form,
    same_token,
    set_cookie,
)
from server.budget.api.deps import LedgerDep, resolve_token
from server.budget.core.security import hash_token
from server.budget.dashboard_sessions import end_session, start_session

router = APIRouter(tags=["dashboard"])
log = logging.getLogger("fedcare.budget")
PAGE = (Path(__file__).resolve().parents[2] / "templates" / "login.html").read_text()
LOGIN_FORM_SECONDS = 3600


def _login_page(request: Request, *, error: str = "", status_code: int = 200) -> HTMLResponse:
    """The form, with a CSRF token that is also set as a cookie (kept when the browser has a fresh one)."""
    csrf = request.cookies.get(LOGIN_COOKIE, "")
    if not (20 <= len(csrf) <= 64 and csrf.replace("-", "").replace("_", "").isalnum()):
        csrf = secrets.token_urlsafe(32)
    nonce = secrets.token_urlsafe(16)
    message = f'<p class="error" role="alert">{html.escape(error)}</p>' if error else ""
    page = PAGE.replace("__NONCE__", nonce).replace("__CSRF__", csrf).replace("__ERROR__", message)
    response = HTMLResponse(page, status_code=status_code, headers=page_headers(nonce))
    set_cookie(response, LOGIN_COOKIE, csrf, max_age=LOGIN_FORM_SECONDS)
    return response


@router.get(LOGIN_PATH, response_class=HTMLResponse)
async def login_form(request: Request) -> HTMLResponse:
    """The sign-in form. A `token` in its URL is ignored: tokens go in the form's body only."""
    return _login_page(request)


@router.post(LOGIN_PATH, response_class=HTMLResponse, responses={303: {"description": "Signed in: to /dashboard"}})
async def login(request: Request, ledger: LedgerDep) -> Response:
    """Check the token from the form; on success start a session and go to the dashboard (303)."""
    form = await read_form(request)
    if from_elsewhere(request) or not same_token(form.get("csrf", ""), request.cookies.get(LOGIN_COOKIE, "")):
        return _login_page(
            request,
            error="This sign-in form expired or was not sent from this page; sign in again.",
            status_code=status.HTTP_403_FORBIDDEN,
        )
    token = form.get("token", "").strip()
    try:
        principal = await resolve_token(request, token) if token else None
    except HTTPException:
        principal = None
    if principal is None:
        return _login_page(
            request,
            error="That token was not accepted: paste the whole token (a hospital's is in its site directory's "
            "budget-token file), or ask the coordinator for a new one.",
            status_code=status.HTTP_401_UNAUTHORIZED,
        )
    hours = request.app.state.settings.dashboard_session_hours
    cookie = await ledger.write(start_session, token_hash=hash_token(token), hours=hours)
    log.info("dashboard sign-in: %s %r", principal.role.value, principal.name)
    response = RedirectResponse("/dashboard", status_code=status.HTTP_303_SEE_OTHER)
    set_cookie(response, SESSION_COOKIE, cookie, max_age=int(hours * 3600))
    clear_cookie(response, LOGIN_COOKIE)
    return response


@router.post("/dashboard/logout", responses={303: {"description": "Signed out: to the sign-in page"}})
async def logout(request: Request, ledger: LedgerDep) -> Response:
    """End this browser's session (the row goes: a copy of the cookie stops working too)."""
    form = await read_form(request)
    found = await current_session(request)
    if found is not None:
        cookie, signed_in = found
        if from_elsewhere(request) or not same_token(form.get("csrf", ""), signed_in.csrf):
            raise HTTPException(
                status.HTTP_403_FORBIDDEN, detail="this sign-out form was not sent from the dashboard; use its button"
            )
        await ledger.write(end_session, cookie=cookie)
    response = RedirectResponse(LOGIN_PATH, status_code=status.HTTP_303_SEE_OTHER)
    clear_cookie(response, SESSION_COOKIE)
    return response
