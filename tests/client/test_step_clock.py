"""The step clock: it stops the loop before a step would end past the deadline, and slows steps only on purpose."""

from __future__ import annotations

import time

from client.step_clock import StepClock, clock_for
from common.settings import NodeSettings


def test_the_clock_stops_the_loop_when_a_typical_step_would_end_after_the_deadline() -> None:
    clock = StepClock(stop_at=time.monotonic() + 1.0)
    assert clock(0.1) and clock(0.3) and clock(0.2)  # median 0.2 s still fits in the second left
    late = StepClock(stop_at=time.monotonic() + 0.05)
    assert not late(0.1)
    assert (clock.steps, clock.median_step) == (3, 0.2) and abs(clock.seconds - 0.6) < 1e-9


def test_a_slowdown_multiplies_each_step_but_the_first_and_is_off_unless_asked_for(tmp_path) -> None:
    clock = StepClock(slowdown=3.0)
    started = time.monotonic()
    clock(0.01)  # warm-up: left as it is
    clock(0.02)  # then sleeps 2 x 0.02
    assert time.monotonic() - started >= 0.04
    assert clock.durations[0] == 0.01 and abs(clock.durations[1] - 0.06) < 1e-9
    plain = NodeSettings(institution="h", data_path=tmp_path / "d.csv")
    assert clock_for(plain, institution="h", local_workers=1).slowdown == 1.0
    assert clock_for(plain, institution="h", local_workers=2) is None  # steps in other processes
