"""An authenticated connection to the budget service, with retries, and the reads every token may make.

The ServerApp's event client and the operators' admin SDK both build on it.
Only httpx and the standard library are used, so the ServerApp stays light.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Self

import httpx


class BudgetServiceError(RuntimeError):
    """The budget service answered with an error, or could not be reached."""

    def __init__(self, message: str, *, status_code: int | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code


class BudgetServiceUnavailable(BudgetServiceError):
    """No answer after the retries (connection refused, timeout, 5xx)."""


class BudgetAuthError(BudgetServiceError):
    """401 or 403: the token is missing, unknown, or lacks the role."""


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


def _detail(response: httpx.Response) -> str:
    try:
        detail = response.json().get("detail")
    except (ValueError, AttributeError):
        detail = None
    return f"{response.status_code} {detail or response.text[:300]}"


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
    ) -> None:
        """`http` replaces the connection (tests pass FastAPI's TestClient); it gets this client's headers."""
        self.base_url = base_url.rstrip("/")
        self.retries, self.backoff = retries, backoff
        self._http = http or httpx.Client(base_url=self.base_url, timeout=timeout)
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
                last = f"{type(exc).__name__}: {exc}"
                continue
            if response.status_code >= 500:
                last = _detail(response)
                continue
            if response.status_code in (401, 403):
                raise BudgetAuthError(f"{method} {path}: {_detail(response)}", status_code=response.status_code)
            if response.status_code >= 400:
                kind = BudgetRejected if response.status_code == 422 else BudgetServiceError
                raise kind(f"{method} {path}: {_detail(response)}", status_code=response.status_code)
            return response
        raise BudgetServiceUnavailable(
            f"{method} {self.base_url}{path}: no answer after {self.retries + 1} tries ({last})"
        )

    def get_json(self, path: str, **params: Any) -> Any:
        return self.request("GET", path, params=params or None).json()

    def budgets(self) -> dict[str, BudgetView]:
        """Every budget this token may read (aggregator, admin: all; institution: its own), by institution name."""
        return {b["institution"]: BudgetView.from_json(b) for b in self.get_json("/v1/budgets")}

    def run_budget(self, run_id: str | int) -> dict[str, Any]:
        return self.get_json(f"/v1/runs/{run_id}/budget")

    def events(self, institution_id: int, *, limit: int = 100, offset: int = 0) -> dict[str, Any]:
        return self.get_json(f"/v1/institutions/{institution_id}/events", limit=limit, offset=offset)
