"""An authenticated connection to the budget service, with retries, and the reads every token may make.

The ServerApp's event client and the operators' admin SDK both build on it.
Only httpx and the standard library are used, so the ServerApp stays light.
"""

from __future__ import annotations

import ssl
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

import httpx


class BudgetServiceError(RuntimeError):
    """The budget service answered with an error, or could not be reached."""

    def __init__(self, message: str, *, status_code: int | None = None, detail: str | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.detail = detail or message  # the service's own words, without the method and path


class BudgetServiceUnavailable(BudgetServiceError):
    """No answer after the retries (connection refused, timeout, 5xx)."""


class BudgetAuthError(BudgetServiceError):
    """401 or 403: the token is missing, unknown, or lacks the role."""


class BudgetTlsError(BudgetServiceError):
    """The TLS handshake failed: a certificate the CA did not sign, a name it does not cover, or not TLS at all.

    Raised at once, without retries: a certificate does not get better by asking again."""


class BudgetRejected(BudgetServiceError):
    """422: the service refused some events as invalid; they are kept in rejected.jsonl."""


@dataclass(frozen=True)
class BudgetView:
    institution_id: int
    institution: str
    epsilon_spent: float
    epsilon_limit: float
    epsilon_remaining: float
    delta: float
    rounds: int
    last_event_at: str | None
    epsilon_next_round: float | None  # spending after one more round like the last one
    can_cover_next_round: bool
    flagged_events: int

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> BudgetView:
        return cls(**{name: raw.get(name) for name in cls.__dataclass_fields__})


def _service_detail(response: httpx.Response) -> str:
    try:
        detail = response.json().get("detail")
    except (ValueError, AttributeError):
        detail = None
    return str(detail or response.text[:300])


def _detail(response: httpx.Response) -> str:
    return f"{response.status_code} {_service_detail(response)}"


def _tls_failure(exc: BaseException) -> ssl.SSLError | None:
    """The SSL error under an httpx transport error, if the failure was TLS (httpx wraps it twice)."""
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        if isinstance(cause, ssl.SSLError):
            return cause
        seen.add(id(cause))
        cause = cause.__cause__ or cause.__context__
    return None


def tls_context(ca_certificate: Path | str) -> ssl.SSLContext:
    """Trust exactly the federation's CA (not the system's list): only a certificate it signed is the service."""
    try:
        return ssl.create_default_context(cafile=str(ca_certificate))
    except (OSError, ssl.SSLError) as exc:
        raise BudgetTlsError(f"cannot load the CA certificate {ca_certificate}: {exc}") from None


class BudgetConnection:
    def __init__(
        self,
        base_url: str,
        token: str,
        *,
        timeout: float = 5.0,
        retries: int = 3,
        backoff: float = 0.25,
        http: httpx.Client | None = None,
        ca_certificate: Path | str | None = None,
    ) -> None:
        """`http` replaces the connection (tests pass FastAPI's TestClient); it gets this client's headers.

        `ca_certificate`: for an https URL, trust only that CA (the federation's `ca.crt`); without it
        the system's trust store is used."""
        self.base_url = base_url.rstrip("/")
        self.retries, self.backoff = retries, backoff
        self.ca_certificate = ca_certificate
        verify: ssl.SSLContext | bool = tls_context(ca_certificate) if ca_certificate is not None else True
        self._http = http or httpx.Client(base_url=self.base_url, timeout=timeout, verify=verify)
        self._http.headers.update({"Authorization": f"Bearer {token}", "User-Agent": "fedcare-budget-client"})

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """One call with retries on connection errors and 5xx; 4xx raise at once."""
        last = "no attempt made"
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            try:
                response = self._http.request(method, path, **kwargs)
            except httpx.TransportError as exc:
                failure = _tls_failure(exc)
                if failure is not None:
                    raise BudgetTlsError(self._tls_message(failure)) from None
                last = f"{type(exc).__name__}: {exc}"
                continue
            if response.status_code >= 500:
                last = _detail(response)
                continue
            if response.status_code >= 400:
                kind = (
                    BudgetAuthError
                    if response.status_code in (401, 403)
                    else BudgetRejected
                    if response.status_code == 422
                    else BudgetServiceError
                )
                raise kind(
                    f"{method} {path}: {_detail(response)}",
                    status_code=response.status_code,
                    detail=_service_detail(response),
                )
            return response
        raise BudgetServiceUnavailable(
            f"{method} {self.base_url}{path}: no answer after {self.retries + 1} tries ({last})", detail=last
        )

    def _tls_message(self, failure: ssl.SSLError) -> str:
        reason = getattr(failure, "verify_message", None) or failure.reason or str(failure)
        if not self.base_url.startswith("https://"):
            return f"{self.base_url} answered with TLS ({reason}): dial it as https://"
        trust = f"the CA in {self.ca_certificate}" if self.ca_certificate else "this system's CAs"
        return (
            f"TLS with {self.base_url} failed ({reason}): its certificate must be signed by {trust} and name the "
            "host you dial; an address the certificate lacks needs `fedcare federation budget-cert --san HOST`, "
            "a plain-HTTP service needs http://"
        )

    def get_json(self, path: str, **params: Any) -> Any:
        return self.request("GET", path, params=params or None).json()

    def budgets(self, *, institution: str | None = None) -> dict[str, BudgetView]:
        """Every budget this token may read (aggregator, admin: all; institution: its own), by institution name.

        `institution`: only that one (404 when unknown; 403 when an institution's token asks for another's)."""
        params = {"institution": institution} if institution is not None else {}
        return {b["institution"]: BudgetView.from_json(b) for b in self.get_json("/v1/budgets", **params)}

    def run_budget(self, run_id: str | int) -> dict[str, Any]:
        return self.get_json(f"/v1/runs/{run_id}/budget")

    def events(self, institution_id: int, *, limit: int = 100, offset: int = 0) -> dict[str, Any]:
        return self.get_json(f"/v1/institutions/{institution_id}/events", limit=limit, offset=offset)
