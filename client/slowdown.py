"""TEST AND BENCHMARK ONLY: make this hospital's local steps slower on purpose, to stand for a slower site.

Set by the node config key `test-slowdown` (a factor, e.g. 4) and by nothing else; the hospital says so in a
WARNING every round it applies. After each step it sleeps (factor - 1) times that step's own duration, so a
4x slowdown is 4x whatever this machine's speed is. It exists so that deadline scheduling can be tested and
measured (tests/integration/test_federation.py, bench/deadline.py) without a slower machine at hand.
"""

from __future__ import annotations

import logging
import time

from common.settings import NodeSettings

log = logging.getLogger("flwr.fedcare.client")


class Slowdown:
    """Called after every local step: sleeps so that each step takes `factor` times as long."""

    def __init__(self, factor: float, *, institution: str) -> None:
        if factor < 1:
            raise ValueError(f"test-slowdown = {factor}: a slowdown factor is at least 1")
        self.factor = factor
        self.slept = 0.0
        log.warning(
            "[%s] TEST SLOWDOWN x%g IS ON (node config test-slowdown): every local step is made %g times slower on "
            "purpose; remove test-slowdown from --node-config outside tests and benchmarks",
            institution,
            factor,
            factor,
        )
        self._last = time.monotonic()

    def __call__(self) -> None:
        step = time.monotonic() - self._last
        pause = (self.factor - 1) * step
        time.sleep(pause)
        self.slept += pause
        self._last = time.monotonic()


def slowdown_for(node: NodeSettings, *, institution: str, local_workers: int) -> Slowdown | None:
    """The node config's `test-slowdown` for this round's loop; None when it is off (the default)."""
    if node.test_slowdown <= 1:
        return None
    if local_workers > 1:
        log.warning("[%s] test-slowdown is not applied with local-workers > 1", institution)
        return None
    return Slowdown(node.test_slowdown, institution=institution)
