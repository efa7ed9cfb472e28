"""The chaos soak's short variant: one real federation, four runs, four kinds of fault, no invariant broken.

One bed (bench/chaos_bed.py: 3 hospitals, TLS, DP on, the budget service; the `chaos_bed` fixture, which
test_resume uses next) serves every run, in the order that keeps it whole: a hospital that sends NaN
updates (plain), a ClientApp SIGKILLed mid-round (plain: in SecAgg+ the round would wait out a 60 s stage),
the budget service SIGKILLed and restarted (HE), then the SuperLink SIGKILLed, restarted and the run resumed
(plain). `python bench/chaos.py` runs every kind of fault, on a federation of its own each."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.chaos import soak
from bench.chaos_bed import ChaosBed
from bench.chaos_faults import Trial

pytestmark = pytest.mark.slow

TRIALS = [
    Trial(0, "plain", "corrupt-update", after_round=1, delay=0.0, victim="hospital-3"),
    Trial(1, "plain", "kill-clientapp", after_round=1, delay=0.0, victim="hospital-2"),
    Trial(2, "he", "kill-budget", after_round=1, delay=0.2, victim="hospital-1"),
    Trial(3, "plain", "kill-superlink", after_round=1, delay=0.3, victim="hospital-1"),
]


def test_four_faults_on_one_federation_break_no_invariant(tmp_path: Path, chaos_bed: ChaosBed) -> None:
    report = soak(TRIALS, workdir=tmp_path, bed=chaos_bed)  # what the bed leaves behind: checked as it stops
    print("\nchaos:", {k: report[k] for k in ("faults", "faults_not_injected", "seconds_per_trial")})
    assert report["violations"] == []
    assert report["faults"] == {t.fault: 1 for t in TRIALS}, report["runs"]
