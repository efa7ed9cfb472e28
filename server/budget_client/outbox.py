"""Events the budget service has not acknowledged yet, kept on disk so none is ever dropped.

JSON lines in one directory, which several ServerApps may share (a file lock
serializes them): `outbox.jsonl` holds what waits for delivery, each append
fsync'd before the call returns; `rejected.jsonl` what the service refused as
invalid, kept for a person to look at; `outbox.corrupt` lines torn by a crash
while appending. Emptying the outbox replaces the file atomically.
"""

from __future__ import annotations

import fcntl
import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from common.atomic import append_durably, write_bytes_atomic

log = logging.getLogger("fedcare.budget.client")

OUTBOX, REJECTED, CORRUPT, LOCK = "outbox.jsonl", "rejected.jsonl", "outbox.corrupt", "outbox.lock"


class EventOutbox:
    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)

    @property
    def rejected_path(self) -> Path:
        return self.directory / REJECTED

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the directory's lock (other processes too) while reading, sending and rewriting the outbox."""
        self.directory.mkdir(parents=True, exist_ok=True)
        with open(self.directory / LOCK, "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def keep(self, records: list[dict[str, Any]]) -> None:
        """Add undelivered events, durably, after those already waiting."""
        _append(self.directory / OUTBOX, records)

    def set_aside(self, records: list[dict[str, Any]]) -> None:
        """Keep events the service refused, each with its `rejected_because`."""
        _append(self.rejected_path, records)

    def waiting(self) -> list[dict[str, Any]]:
        """The events waiting, in the order they were kept; torn lines are moved to outbox.corrupt."""
        path = self.directory / OUTBOX
        if not path.exists():
            return []
        records = []
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:  # a line torn by a crash while appending
                _append(self.directory / CORRUPT, [{"line": number, "text": line}])
                log.error("%s line %d is not JSON (torn write?); moved to %s", path, number, CORRUPT)
        return records

    def clear(self) -> None:
        write_bytes_atomic(self.directory / OUTBOX, b"")


def _append(path: Path, records: list[dict[str, Any]]) -> None:
    append_durably(path, "".join(json.dumps(r, allow_nan=False) + "\n" for r in records).encode())
