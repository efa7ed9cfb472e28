"""When to ask Flower how a run stands, so that waiting for a run does not slow it down.

Flower's status comes from `flwr ls`: a fresh CLI process that costs about a second of CPU (its imports) and
1-6 s of wall time on a loaded two-core machine. Asked every two seconds, as the demo and the integration
tests did, it took a quarter to a half of a core from the federation it was waiting for. The warm ServerApp
executor logs a line when each of its runs ends (`TASK_ENDED_MARKS`), so the watch reads that log, which is
cheap, and asks Flower when a run ended there, and otherwise only every `fallback` seconds (a run stopped
from outside, a federation without the executor). With that log it does not ask at the start either (the
run was just submitted: that answer is known, and cost a run of three rounds 1-2 s of a core); `since`, the
log's size when the run was submitted, keeps a run that ended before the watch began from being missed.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedcare.warm_executor import TASK_ENDED_MARKS


@dataclass
class RunWatch:
    ask: Callable[[], dict[str, Any]]  # Flower's row for the run (`flwr ls`)
    task_log: Path | None = None  # the ServerApp executor's log; None: ask every `fallback` seconds
    fallback: float = 10.0
    since: int | None = None  # read the log from here (its size at submission); None: from its size now
    info: dict[str, Any] = field(default_factory=dict)  # Flower's last answer
    _offset: int = 0
    _asked: float = -math.inf

    def __post_init__(self) -> None:
        self._offset = self._log_size() if self.since is None else self.since
        if self.task_log is not None:
            self._asked = time.monotonic()

    @property
    def status(self) -> str:
        return str(self.info.get("status", ""))

    def check(self) -> dict[str, Any]:
        """Flower's row for the run: asked now when a run ended in the log (or, without a log, at the first
        check), or once `fallback` seconds passed since the last answer; else the last answer."""
        if self._a_task_ended() or time.monotonic() - self._asked >= self.fallback:
            self._asked = time.monotonic()
            self.info = self.ask()
        return self.info

    def _log_size(self) -> int:
        try:
            return self.task_log.stat().st_size if self.task_log is not None else 0
        except OSError:
            return 0

    def _a_task_ended(self) -> bool:
        size = self._log_size()
        if self.task_log is None or size <= self._offset:
            self._offset = min(self._offset, size)  # a log rotated or truncated: read it from its start
            return False
        with open(self.task_log, "rb") as log:
            log.seek(self._offset)
            new = log.read(size - self._offset)
        whole = new[: new.rfind(b"\n") + 1]  # a line still being written is read again next time
        self._offset += len(whole)
        return any(mark.encode() in whole for mark in TASK_ENDED_MARKS)
