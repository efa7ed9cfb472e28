"""The chaos soak's schedule: seeded, every kind of fault within the first len(FAULTS) trials, modes alternating."""

from __future__ import annotations

from bench.chaos_faults import FAULTS, MODES, ROUNDS, schedule


def test_a_seed_gives_one_schedule_that_covers_every_fault_first_and_no_corruption_under_secagg() -> None:
    for seed in range(50):
        trials = schedule(seed=seed, trials=3 * len(FAULTS))
        assert trials == schedule(seed=seed, trials=3 * len(FAULTS))
        assert {t.fault for t in trials[: len(FAULTS)]} == set(FAULTS), seed
        assert [t.mode for t in trials] == [MODES[i % len(MODES)] for i in range(len(trials))]
        assert not [t for t in trials if t.mode == "secagg" and t.fault == "corrupt-update"]
        assert all(1 <= t.after_round < ROUNDS for t in trials)


def test_a_schedule_narrowed_to_one_fault_mode_and_moment_holds_only_those() -> None:
    trials = schedule(
        seed=3, trials=12, faults=("kill-clientapp",), modes=("plain",), after_rounds=(1, 1), max_delay=0.3
    )
    assert {(t.mode, t.fault, t.after_round) for t in trials} == {("plain", "kill-clientapp", 1)}
    assert all(0.0 <= t.delay <= 0.3 for t in trials)
    assert len({(t.delay, t.victim) for t in trials}) > 1  # the moments and victims still vary
