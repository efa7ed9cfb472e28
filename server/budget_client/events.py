"""The ServerApp's client for the budget service: deliver every DP event, never drop one.

`post_events` first resends what an earlier call could not deliver, then posts
the new events with retries and backoff; what still cannot be delivered is
kept in the outbox on disk and sent first by the next call. The service is
idempotent on (run_id, server_round, institution), so a resend after a lost
reply is harmless. Events the service refuses as invalid (422) are set aside
in `rejected.jsonl` beside the outbox and reported with `BudgetRejected`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from common.dp_event import MAX_BATCH, ledger_record
from server.budget_client.connection import (
    BudgetAuthError,
    BudgetConnection,
    BudgetRejected,
    BudgetServiceError,
    BudgetServiceUnavailable,
)
from server.budget_client.outbox import EventOutbox

log = logging.getLogger("fedcare.budget.client")


class BudgetEventClient(BudgetConnection):
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
        ca_certificate: Path | str | None = None,
    ) -> None:
        """Without `outbox_dir`, events that cannot be delivered raise instead of waiting on disk."""
        super().__init__(
            base_url,
            token,
            timeout=timeout,
            retries=retries,
            backoff=backoff,
            http=http,
            ca_certificate=ca_certificate,
        )
        self.outbox = EventOutbox(outbox_dir) if outbox_dir is not None else None
        self._lock = threading.Lock()

    def post_events(self, events: list[dict[str, Any]]) -> None:
        """Deliver `events` (ledger records, see `common.dp_event`) after any undelivered ones, or keep them.

        Raises BudgetRejected when the service refused some as invalid (the rest
        are stored), and BudgetAuthError when the token is refused (everything is
        kept in the outbox for a later call with a good token).
        """
        records = [ledger_record(e) for e in events]
        with self._locked():
            try:
                self._flush_locked()
                self._deliver(records)
            except (BudgetServiceUnavailable, BudgetAuthError) as exc:
                self._require_outbox().keep(records)
                log.warning("budget service: %d event(s) kept in the outbox for later (%s)", len(records), exc)
                if isinstance(exc, BudgetAuthError):
                    raise

    def flush_outbox(self) -> int:
        """Send the events kept on disk; returns how many were delivered. Raises if the service is unreachable."""
        with self._locked():
            return self._flush_locked()

    def pending(self) -> int:
        """Events waiting in the outbox."""
        return len(self.outbox.waiting()) if self.outbox is not None else 0

    @contextmanager
    def _locked(self) -> Iterator[None]:
        with self._lock:
            if self.outbox is None:
                yield
                return
            with self.outbox.locked():  # several ServerApps may share one outbox directory
                yield

    def _require_outbox(self) -> EventOutbox:
        if self.outbox is None:
            raise BudgetServiceError("this client has no outbox_dir, so it cannot keep undelivered events")
        return self.outbox

    def _deliver(self, records: list[dict[str, Any]]) -> None:
        rejected: list[tuple[dict[str, Any], str]] = []
        for start in range(0, len(records), MAX_BATCH):
            chunk = records[start : start + MAX_BATCH]
            try:
                self.request("POST", "/v1/events", json=chunk)
            except BudgetRejected as exc:
                if len(chunk) == 1:
                    rejected.append((chunk[0], str(exc)))
                    continue
                for record in chunk:  # find the bad ones; the good ones still get stored
                    try:
                        self.request("POST", "/v1/events", json=[record])
                    except BudgetRejected as one:
                        rejected.append((record, str(one)))
        if rejected:
            outbox = self._require_outbox()
            outbox.set_aside([r | {"rejected_because": why} for r, why in rejected])
            reasons = "; ".join(sorted({why for _, why in rejected}))
            raise BudgetRejected(
                f"{len(rejected)} event(s) refused and kept in {outbox.rejected_path}: {reasons}", status_code=422
            )

    def _flush_locked(self) -> int:
        if self.outbox is None:
            return 0
        records = self.outbox.waiting()
        if not records:
            return 0
        try:
            self._deliver(records)
        except BudgetRejected as exc:
            log.error("budget service refused events from the outbox: %s", exc)
        self.outbox.clear()
        log.info("budget service: delivered %d event(s) from the outbox", len(records))
        return len(records)
