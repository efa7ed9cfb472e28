"""The ServerApp's (and the CLI's) client for the privacy budget service.

Events are never dropped. `post_events` first resends what an earlier call
could not deliver, then posts the new events with retries and backoff; what
still cannot be delivered is appended to an outbox on disk (JSON lines,
fsync'd) and sent first by the next call. The service is idempotent on
(run_id, server_round, institution), so a resend after a lost reply is harmless.
Events the service refuses as invalid (422) are kept in `rejected.jsonl` beside
the outbox and reported with `BudgetRejected`.

Only httpx and the standard library are used, so the ServerApp stays light.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

log = logging.getLogger("fedcare.budget.client")

EVENT_FIELDS = {
    "run_id": str,
    "server_round": int,
    "institution": str,
    "noise_multiplier": float,
    "sample_rate": float,
    "steps": int,
    "accountant": str,
    "epsilon": float,
    "delta": float,
}
OUTBOX, REJECTED, LOCK = "outbox.jsonl", "rejected.jsonl", "outbox.lock"
MAX_BATCH = 1000


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


@dataclass(frozen=True)
class InstitutionView:
    id: int
    name: str
    epsilon_limit: float
    delta: float
    token: str | None  # only when this call created the institution


def normalize_event(event: dict[str, Any]) -> dict[str, Any]:
    """The ledger's fields of one DP event, as JSON-ready Python scalars (extra keys are left out)."""
    missing = [k for k in EVENT_FIELDS if k not in event]
    if missing:
        raise ValueError(f"DP event {event!r} lacks {', '.join(missing)}")
    return {key: kind(event[key]) for key, kind in EVENT_FIELDS.items()}


def _detail(response: httpx.Response) -> str:
    try:
        detail = response.json().get("detail")
    except (ValueError, AttributeError):
        detail = None
    return f"{response.status_code} {detail or response.text[:300]}"


class BudgetClient:
    def __init__(
        self,
        base_url: str,
        token: str,
        *,
        outbox_dir: Path | None = None,
        timeout: float = 5.0,
        retries: int = 3,
        backoff: float = 0.25,
        http: httpx.Client | None = None,
    ) -> None:
        """`http` replaces the connection (tests pass FastAPI's TestClient); it gets this client's headers."""
        self.base_url = base_url.rstrip("/")
        self.outbox_dir = Path(outbox_dir) if outbox_dir is not None else None
        self.retries, self.backoff = retries, backoff
        self._http = http or httpx.Client(base_url=self.base_url, timeout=timeout)
        self._http.headers.update({"Authorization": f"Bearer {token}", "User-Agent": "fedcare-budget-client"})
        self._lock = threading.Lock()

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> BudgetClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # ------------------------------------------------------------------ HTTP

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
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

    def _get(self, path: str, **params: Any) -> Any:
        return self._request("GET", path, params=params or None).json()

    # ------------------------------------------------------------------ events

    def post_events(self, events: list[dict[str, Any]]) -> None:
        """Deliver `events` (after any undelivered ones), or keep them in the outbox; never drop one.

        Raises BudgetRejected when the service refused some as invalid (the rest
        are stored), and BudgetAuthError when the token is refused (everything is
        kept in the outbox for a later call with a good token).
        """
        records = [normalize_event(e) for e in events]
        with self._outbox_locked():
            try:
                self._flush_locked()
            except (BudgetServiceUnavailable, BudgetAuthError) as exc:
                self._append(OUTBOX, records)
                log.warning("budget service: %d event(s) kept in the outbox for later (%s)", len(records), exc)
                if isinstance(exc, BudgetAuthError):
                    raise
                return
            try:
                self._deliver(records)
            except (BudgetServiceUnavailable, BudgetAuthError) as exc:
                self._append(OUTBOX, records)
                log.warning("budget service: %d event(s) kept in the outbox for later (%s)", len(records), exc)
                if isinstance(exc, BudgetAuthError):
                    raise

    def flush_outbox(self) -> int:
        """Send the events kept on disk; returns how many were delivered. Raises if the service is unreachable."""
        with self._outbox_locked():
            return self._flush_locked()

    def pending(self) -> int:
        """Events waiting in the outbox."""
        return len(self._read(OUTBOX)) if self.outbox_dir is not None else 0

    def _deliver(self, records: list[dict[str, Any]]) -> None:
        rejected: list[tuple[dict[str, Any], str]] = []
        for start in range(0, len(records), MAX_BATCH):
            chunk = records[start : start + MAX_BATCH]
            try:
                self._request("POST", "/v1/events", json=chunk)
            except BudgetRejected as exc:
                if len(chunk) == 1:
                    rejected.append((chunk[0], str(exc)))
                    continue
                for record in chunk:  # find the bad ones; the good ones still get stored
                    try:
                        self._request("POST", "/v1/events", json=[record])
                    except BudgetRejected as one:
                        rejected.append((record, str(one)))
        if rejected:
            self._append(REJECTED, [r | {"rejected_because": why} for r, why in rejected])
            reasons = "; ".join(sorted({why for _, why in rejected}))
            raise BudgetRejected(
                f"{len(rejected)} event(s) refused and kept in {self.outbox_dir / REJECTED}: {reasons}", status_code=422
            )

    def _flush_locked(self) -> int:
        if self.outbox_dir is None:
            return 0
        records = self._read(OUTBOX)
        if not records:
            return 0
        try:
            self._deliver(records)
        except BudgetRejected as exc:
            log.error("budget service refused events from the outbox: %s", exc)
        self._rewrite(OUTBOX, [])
        log.info("budget service: delivered %d event(s) from the outbox", len(records))
        return len(records)

    # ------------------------------------------------------------------ the outbox on disk

    @contextmanager
    def _outbox_locked(self) -> Iterator[None]:
        with self._lock:
            if self.outbox_dir is None:
                yield
                return
            self.outbox_dir.mkdir(parents=True, exist_ok=True)
            with open(self.outbox_dir / LOCK, "a") as handle:
                fcntl.flock(handle, fcntl.LOCK_EX)  # several ServerApps may share one outbox directory
                try:
                    yield
                finally:
                    fcntl.flock(handle, fcntl.LOCK_UN)

    def _require_outbox(self) -> Path:
        if self.outbox_dir is None:
            raise BudgetServiceError("this BudgetClient has no outbox_dir, so it cannot keep undelivered events")
        return self.outbox_dir

    def _append(self, name: str, records: list[dict[str, Any]]) -> None:
        path = self._require_outbox() / name
        new = not path.exists()
        with open(path, "a", encoding="utf-8") as handle:
            handle.write("".join(json.dumps(r, allow_nan=False) + "\n" for r in records))
            handle.flush()
            os.fsync(handle.fileno())
        if new:
            _fsync_dir(path.parent)

    def _read(self, name: str) -> list[dict[str, Any]]:
        path = self._require_outbox() / name
        if not path.exists():
            return []
        records = []
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:  # a line torn by a crash while appending
                self._append("outbox.corrupt", [{"line": number, "text": line}])
                log.error("%s line %d is not JSON (torn write?); moved to outbox.corrupt", path, number)
        return records

    def _rewrite(self, name: str, records: list[dict[str, Any]]) -> None:
        path = self._require_outbox() / name
        tmp = path.with_suffix(".tmp")
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write("".join(json.dumps(r) + "\n" for r in records))
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)

    # ------------------------------------------------------------------ reads and admin

    def budgets(self) -> dict[str, BudgetView]:
        """Every budget this token may read (aggregator, admin: all), by institution name."""
        return {b["institution"]: BudgetView.from_json(b) for b in self._get("/v1/budgets")}

    def run_budget(self, run_id: str | int) -> dict[str, Any]:
        return self._get(f"/v1/runs/{run_id}/budget")

    def events(self, institution_id: int, *, limit: int = 100, offset: int = 0) -> dict[str, Any]:
        return self._get(f"/v1/institutions/{institution_id}/events", limit=limit, offset=offset)

    def ensure_institution(self, name: str, epsilon_limit: float, delta: float) -> InstitutionView:
        """Register `name` (admin token) or return the existing one; `token` is set only when created now."""
        try:
            raw = self._request(
                "POST", "/v1/institutions", json={"name": name, "epsilon_limit": epsilon_limit, "delta": delta}
            ).json()
            return InstitutionView(raw["id"], raw["name"], raw["epsilon_limit"], raw["delta"], raw["token"])
        except BudgetServiceError as exc:
            if exc.status_code != 409:
                raise
        for raw in self._get("/v1/institutions"):
            if raw["name"] == name:
                if (raw["epsilon_limit"], raw["delta"]) != (epsilon_limit, delta):
                    log.warning(
                        "institution %r already exists with epsilon limit %g, delta %g (asked for %g, %g); "
                        "keeping the stored values",
                        name,
                        raw["epsilon_limit"],
                        raw["delta"],
                        epsilon_limit,
                        delta,
                    )
                return InstitutionView(raw["id"], raw["name"], raw["epsilon_limit"], raw["delta"], None)
        raise BudgetServiceError(f"institution {name!r} exists (409) but is not listed")

    def find_institution(self, name: str) -> InstitutionView | None:
        """The institution registered under `name` (admin token), or None."""
        for raw in self._get("/v1/institutions"):
            if raw["name"] == name:
                return InstitutionView(raw["id"], raw["name"], raw["epsilon_limit"], raw["delta"], None)
        return None

    def rotate_institution_token(self, institution_id: int) -> str:
        """A new token for the institution (admin token needed); every earlier one stops working. Shown once."""
        return self._request("POST", f"/v1/institutions/{institution_id}/token").json()["token"]

    def revoke_institution_tokens(self, institution_id: int) -> int:
        """Disable every token of the institution (admin token needed); returns how many were revoked."""
        return int(self._request("DELETE", f"/v1/institutions/{institution_id}/tokens").json()["revoked"])

    def create_aggregator_token(self, name: str) -> str:
        """A new token for a ServerApp (admin token needed); shown once."""
        return self._request("POST", "/v1/aggregators", json={"name": name}).json()["token"]


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
