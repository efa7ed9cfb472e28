"""What a browser gets from the budget service: its session and sign-in cookies, and the pages' headers.

Every cookie is `__Host-` prefixed, Secure, HttpOnly and SameSite=Strict on path `/`: the browser sends
it only over HTTPS (localhost excepted), only to this host, never to scripts and never on a request
another site starts, which is what keeps the sign-in and sign-out forms safe from cross-site posts
together with their CSRF tokens.
"""

from __future__ import annotations

import hmac
from urllib.parse import parse_qs, urlsplit

from fastapi import HTTPException, Request, Response, status

from server.budget.dashboard_sessions import SignedIn, find_session

SESSION_COOKIE = "__Host-fedcare-session"
LOGIN_COOKIE = "__Host-fedcare-login"  # the sign-in form's CSRF token (double submit: cookie and field)
LOGIN_PATH = "/dashboard/login"
MAX_FORM_BYTES = 4096  # a token and a CSRF field; anything larger is not our form


def set_cookie(response: Response, name: str, value: str, *, max_age: int) -> None:
    response.set_cookie(name, value, max_age=max_age, path="/", secure=True, httponly=True, samesite="strict")


def clear_cookie(response: Response, name: str) -> None:
    response.delete_cookie(name, path="/", secure=True, httponly=True, samesite="strict")


def same_token(a: str, b: str) -> bool:
    return bool(a) and bool(b) and hmac.compare_digest(a.encode(), b.encode())


def page_headers(nonce: str, *, connect: bool = False) -> dict[str, str]:
    """No resource from elsewhere, no framing, forms only to this service, nothing cached or referred elsewhere."""
    connect_src = "'self'" if connect else "'none'"
    return {
        "Content-Security-Policy": f"default-src 'none'; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; "
        f"connect-src {connect_src}; img-src 'self' data:; base-uri 'none'; form-action 'self'; "
        "frame-ancestors 'none'",
        "Cache-Control": "no-store",
        # Not no-referrer: under it browsers send `Origin: null` with the page's own forms, which from_elsewhere
        # refuses. same-origin still sends nothing to any other site.
        "Referrer-Policy": "same-origin",
        "X-Frame-Options": "DENY",
        "X-Content-Type-Options": "nosniff",
    }


def from_elsewhere(request: Request) -> bool:
    """True when the browser says the form came from another origin (its Origin header names another host)."""
    origin = request.headers.get("origin")
    if not origin or origin == "null":
        return origin == "null"
    return urlsplit(origin).netloc != request.headers.get("host", "")


async def read_form(request: Request) -> dict[str, str]:
    """The fields of a small url-encoded form (first value of each); 415 or 413 for anything else."""
    if request.headers.get("content-type", "").split(";")[0].strip() != "application/x-www-form-urlencoded":
        raise HTTPException(status.HTTP_415_UNSUPPORTED_MEDIA_TYPE, detail="send the form url-encoded")
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            raise HTTPException(status.HTTP_413_CONTENT_TOO_LARGE, detail="the form is larger than a sign-in form")
    try:
        fields = parse_qs(body.decode(), keep_blank_values=True, max_num_fields=8, strict_parsing=False)
    except (UnicodeDecodeError, ValueError):
        raise HTTPException(status.HTTP_400_BAD_REQUEST, detail="the form is not url-encoded UTF-8") from None
    return {name: values[0] for name, values in fields.items()}


async def current_session(request: Request) -> tuple[str, SignedIn] | None:
    """The session cookie and its live session, or None."""
    cookie = request.cookies.get(SESSION_COOKIE)
    if not cookie:
        return None
    signed_in = await request.app.state.ledger.read(find_session, cookie=cookie)
    return None if signed_in is None else (cookie, signed_in)
