"""Bearer tokens: made with `secrets`, stored as SHA-256 digests, compared in constant time.

Tokens carry 256 bits of entropy, so a plain SHA-256 digest is enough at rest
(no salt or slow hash is needed for values nobody can guess); a leaked
database does not reveal a usable token.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from dataclasses import dataclass
from enum import StrEnum

TOKEN_PREFIX = "fcb_"


class Role(StrEnum):
    admin = "admin"
    aggregator = "aggregator"
    institution = "institution"


@dataclass(frozen=True)
class Principal:
    """Who is calling: the admin, an aggregator (a ServerApp), or one institution."""

    role: Role
    name: str
    institution_id: int | None = None

    def may_read_institution(self, institution_id: int) -> bool:
        if self.role in (Role.admin, Role.aggregator):
            return True
        return self.institution_id == institution_id


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def same_digest(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


class TokenCache:
    """Verified token digests remembered for a short while, so reads skip the token lookup.

    Only successful lookups are cached. Revoking tokens clears the cache of the
    worker that served the request; in other worker processes the TTL bounds how
    long a revoked token keeps working.
    """

    def __init__(self, ttl_seconds: float, max_entries: int = 10_000) -> None:
        self._ttl, self._max = ttl_seconds, max_entries
        self._entries: dict[str, tuple[float, Principal]] = {}
        self._lock = threading.Lock()

    def get(self, digest: str) -> Principal | None:
        if self._ttl <= 0:
            return None
        with self._lock:
            entry = self._entries.get(digest)
            if entry is None:
                return None
            if entry[0] < time.monotonic():
                del self._entries[digest]
                return None
            return entry[1]

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def put(self, digest: str, principal: Principal) -> None:
        if self._ttl <= 0:
            return
        with self._lock:
            if len(self._entries) >= self._max:
                self._entries.clear()
            self._entries[digest] = (time.monotonic() + self._ttl, principal)
