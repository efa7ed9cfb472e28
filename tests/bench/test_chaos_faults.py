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


def test_a_schedule_narrowed_to_one_fault_and_mode_holds_only_those() -> None:
    trials = schedule(seed=3, trials=12, faults=("kill-clientapp",), modes=("plain",))
    assert {(t.mode, t.fault) for t in trials} == {("plain", "kill-clientapp")}
    assert len({(t.after_round, t.delay, t.victim) for t in trials}) > 1  # the moments and victims still vary
