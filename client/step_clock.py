"""The time a hospital's local steps take, for the server's deadline scheduling; and, for tests only, a slowdown.

The training loops hand each step's duration to a `StepClock` (their `after_step`), so the work report
separates the steps' time, which fewer steps shorten, from the round's fixed costs (loading, Opacus'
set-up, scoring), which they do not. With `round-deadline` the clock also stops the loop when one more
step would end after the deadline: the guard behind the server's schedule (the first round, before a
hospital was measured, or a hospital that slowed down since). The accountant is then amended to the steps
taken before the update leaves (client/accountant_state.py).

TESTS AND BENCHMARKS ONLY: the node config key `test-slowdown` (a factor, e.g. 4) makes the clock sleep
(factor - 1) times each step's own duration after it (from the second step: the first carries warm-up), so
the hospital stands for a site `factor` times slower than this machine. Nothing else sets it, and the
hospital says so in a WARNING every round it applies (tests/server/test_deadline_rounds.py and
bench/deadline.py use it).
"""

from __future__ import annotations

import logging
import statistics
import time

from common.settings import NodeSettings

log = logging.getLogger("flwr.fedcare.client")


class StepClock:
    """Called after every local step with that step's seconds; sums them (slowdown pauses included)."""

    def __init__(self, *, slowdown: float = 1.0, stop_at: float | None = None) -> None:
        if slowdown < 1:
            raise ValueError(f"test-slowdown = {slowdown}: a slowdown factor is at least 1")
        self.slowdown = slowdown
        self.stop_at = stop_at  # monotonic seconds: the round's deadline at this hospital; None: no deadline
        self.durations: list[float] = []

    def __call__(self, step_seconds: float) -> bool:
        """Whether the loop goes on: not when one more typical step would end after the round's deadline."""
        # The first step is left as it is: it carries the loop's warm-up (Opacus' first hooked backward), which
        # a slower machine would not multiply.
        pause = (self.slowdown - 1) * step_seconds if self.durations else 0.0
        if pause > 0:
            time.sleep(pause)
        self.durations.append(step_seconds + pause)
        return self.stop_at is None or time.monotonic() + self.median_step <= self.stop_at

    @property
    def seconds(self) -> float:
        return sum(self.durations)

    @property
    def steps(self) -> int:
        return len(self.durations)

    @property
    def median_step(self) -> float:
        return statistics.median(self.durations) if self.durations else 0.0


def clock_for(
    node: NodeSettings, *, institution: str, local_workers: int, stop_at: float | None = None
) -> StepClock | None:
    """This round's clock, with the node config's `test-slowdown` (said loudly); None with local workers, whose
    steps run in other processes (the round's wall time stands for them then)."""
    if local_workers > 1:
        if node.test_slowdown > 1:
            log.warning("[%s] test-slowdown is not applied with local-workers > 1", institution)
        return None
    if node.test_slowdown > 1:
        log.warning(
            "[%s] TEST SLOWDOWN x%g IS ON (node config test-slowdown): every local step is made %g times slower on "
            "purpose; remove test-slowdown from --node-config outside tests and benchmarks",
            institution,
            node.test_slowdown,
            node.test_slowdown,
        )
    return StepClock(slowdown=node.test_slowdown, stop_at=stop_at)
