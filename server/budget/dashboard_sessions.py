"""Dashboard sign-ins kept in the ledger's database: made at sign-in, ended at sign-out or expiry.

A server-side table rather than a signed cookie: there is no signing secret to generate, store or
leak; signing out ends the session for good (a copied cookie stops working too); and the session
points at the hash of the token it signed in with, so revoking or rotating that token ends it.
The browser holds a random 256-bit id; the table holds only its SHA-256.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import delete
from sqlalchemy.orm import Session

from server.budget.core.db import begin_write
from server.budget.core.security import hash_token
from server.budget.models import DashboardSession, utcnow

MAX_SESSION_ID_LENGTH = 128  # issued ids are 43 characters; a longer cookie is not one of ours


@dataclass(frozen=True)
class SignedIn:
    token_hash: str  # resolved to a principal on every request: a revoked token ends the session
    csrf: str  # the logout form's token


def start_session(*, session: Session, token_hash: str, hours: float) -> str:
    """A new session for the token with this hash; returns the cookie value (shown once, stored hashed)."""
    begin_write(session)
    now = utcnow()
    session.execute(delete(DashboardSession).where(DashboardSession.expires_at <= now))  # expired ones go here
    cookie = secrets.token_urlsafe(32)
    session.add(
        DashboardSession(
            id_hash=hash_token(cookie),
            token_hash=token_hash,
            csrf=secrets.token_urlsafe(32),
            created_at=now,
            expires_at=now + timedelta(hours=hours),
        )
    )
    session.commit()
    return cookie


def find_session(*, session: Session, cookie: str) -> SignedIn | None:
    """The live session this cookie belongs to, or None (unknown, ended or expired)."""
    if not cookie or len(cookie) > MAX_SESSION_ID_LENGTH:
        return None
    row = session.get(DashboardSession, hash_token(cookie))
    if row is None or row.expires_at <= utcnow():
        return None
    return SignedIn(token_hash=row.token_hash, csrf=row.csrf)


def end_session(*, session: Session, cookie: str) -> None:
    begin_write(session)
    session.execute(delete(DashboardSession).where(DashboardSession.id_hash == hash_token(cookie)))
    session.commit()
