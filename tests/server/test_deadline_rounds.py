"""Hospitals of unequal speed: the ServerApp's own loop (`server.app.main`) against the real ClientApp handlers
(loopback grid), with real Opacus and each hospital's real accountant file; one hospital slowed on purpose.

From its second round the slow hospital is scheduled the steps that fit `round-deadline`, takes exactly
those, and its accountant, its DP events and results.json all record that number; the others train in full.

Issue 18's accuracy claim, on a data set that can resolve it (`synthetic`: 2,400 held-out rows, where breast
cancer's 113 make one row 0.9 points), DP off so the runs are seeded and only the schedule differs: slowed and
scheduled with a deadline that leaves the slow hospital three quarters of its work, federations end within one
accuracy point of the same federations at equal speed, on average over three seeds, with the default
`deadline-aggregation` ("fedavg"). A tighter deadline costs more: the slow site's data is then used less, and
no aggregation makes up for it (docs/compute.md, "How much a deadline costs").
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from flwr.app import Context, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from client.accountant_state import HospitalAccountant
from common.demo_data import DemoSplit, write_demo_split
from fedcare.demo import holdout_accuracy
from server.app import main
from server.local_work import LocalWorkScheduler
from tests.server.loopback import RUN, LoopbackGrid, hospital_node_configs

SLOW = 3  # hospital-3 is made SLOWDOWN times slower per step (node config test-slowdown)
SLOWDOWN = 4.0
# Seconds. The slow hospital's full local epochs (LOCAL_EPOCHS at batch 8: about 500 DP steps, each at least a few
# ms even on an idle machine, times SLOWDOWN) take several times this; every hospital's own guard stops at it, so
# the test's rounds stay short under load too. A loose deadline (5 s with 3 epochs) bound only on a loaded machine.
DEADLINE = 1.5
LOCAL_EPOCHS = 40
# The bound asserted on the slow hospital's round: the deadline, plus its last step (the guard stops the loop when
# a typical step would end past the deadline; one step may run longer) plus packing the reply: generous, as
# speeds vary under load; the test is about the mechanism, bench/deadline.py measures.
MARGIN_S = 5.0


def run_loopback(tmp_path: Path, split: DemoSplit, *, slowed: bool, config: dict[str, Any]) -> dict[str, Any]:
    """One whole run through `server.app.main`, hospital-SLOW slowed SLOWDOWN times when `slowed`; its results."""
    only = {SLOW: {"test-slowdown": SLOWDOWN}} if slowed else None
    hospitals = hospital_node_configs(split.hospital_paths, state_root=tmp_path, only=only)
    run_config = {
        "schema-path": str(split.schema_path),
        "results-dir": str(tmp_path / "runs"),
        "min-nodes": 3,
        "poll-interval": 0.01,
        **config,
    }
    context = Context(run_id=RUN, node_id=0, node_config={}, state=RecordDict(), run_config=run_config)
    main(LoopbackGrid(hospitals), context)  # type: ignore[arg-type]
    return json.loads((tmp_path / "runs" / str(RUN) / "results.json").read_text())


@pytest.mark.usefixtures("serverapp_identity")
def test_a_slow_hospital_shortens_its_own_round_and_is_charged_for_the_steps_it_took(
    tmp_path: Path, split: DemoSplit
) -> None:
    config = {"num-rounds": 2, "local-epochs": LOCAL_EPOCHS, "batch-size": 8, "round-deadline": DEADLINE}
    results = run_loopback(tmp_path, split, slowed=True, config=config)
    assert results["status"] == "completed"
    rounds = results["rounds"]
    slow = f"hospital-{SLOW}"
    for entry in rounds:
        assert entry["status"] == "aggregated" and entry["round_deadline"] == DEADLINE
        assert set(entry["sites"]) == {"hospital-1", "hospital-2", slow}
        for name, site in entry["sites"].items():
            # every hospital reports its capabilities and its times; DP events carry the steps it took
            assert site["device"].startswith("cpu") and site["memory_bytes"] > 0 and site["examples_per_second"] > 0
            assert 0 < site["train_seconds"] <= site["round_seconds"]
            assert entry["dp_events"][name]["steps"] == site["local_steps"]
    # Round 1: nobody measured yet, everyone is sent its full local epochs; the slow hospital's own guard
    # stops its loop at the deadline. Round 2: the server schedules each hospital from its measured speed.
    assert all(site["scheduled_steps"] is None for site in rounds[0]["sites"].values())
    assert all(site["scheduled_steps"] is not None for site in rounds[1]["sites"].values())
    for entry in rounds:
        site = entry["sites"][slow]
        assert site["local_steps"] < site["full_steps"], site  # a slow site shortens its own round
        assert site["scheduled_steps"] is None or site["local_steps"] <= site["scheduled_steps"]
        assert site["round_seconds"] <= DEADLINE + MARGIN_S, site

    # The slow hospital's own accountant recorded exactly the steps of each round, in order.
    accountant = HospitalAccountant.for_institution(tmp_path / f"state-{SLOW}", slow)
    assert [steps for _, _, steps in accountant.history] == [e["sites"][slow]["local_steps"] for e in rounds]
    assert [e["steps"] for e in accountant.events] == [e["sites"][slow]["local_steps"] for e in rounds]
    # Fewer steps than planned spend less than the run's target (3): the accountant charged the steps taken.
    assert rounds[-1]["epsilon"][slow] < 3.0


# The accuracy claim. Local work is 2 epochs at batch 64 (about 60-95 steps per hospital and round), 10 rounds:
# enough that the equal-speed model has levelled off (its validation accuracy moves about 1 point from round to
# round by then) without reaching 100%, so a point can be won or lost.
ACCURACY_ROUNDS = {"num-rounds": 10, "local-epochs": 2, "batch-size": 64, "dp": False}
# One seeded run's final accuracy moves by up to 2 points when nothing but the slow site's shuffling changes (at
# full work: +2.3 to -1.8 over 8 seeds, docs/compute.md), so the claim is a mean over seeded federations.
ACCURACY_SEEDS = (42, 7, 123)
# The slowed run's schedule is pinned, so that its accuracy does not follow the machine's load: a deadline taken
# from the equal run's timings and met under another load moved the slow site's share of its steps (16% to 26%
# at integration), and the accuracy with it. From round 1 the slow hospital is given this share of its full steps,
# what a SLOWDOWN-times slower site fits in a deadline of 3 of the others' rounds (its round would take 4); the
# others train in full. The bound holds from about this share up: with a deadline of one of the others' rounds
# (a quarter of its steps) the slow site's data is a quarter as well used and the mean loss is about 2.3 points
# (docs/compute.md, "How much a deadline costs"). The timing-based schedule is tested above and in
# tests/server/test_deadline_sum_rounds.py, and measured by bench/deadline.py.
PINNED_SHARE = 3 / SLOWDOWN
# round-deadline for the slowed run, in seconds: so far above any round here (under a second at load 4) that no
# hospital's own guard stops it, whatever the load; the schedule alone decides the steps. (A deadline of twice the
# equal run's median round stopped a full-speed hospital at 83 of its 90 steps at load 4.)
ACCURACY_DEADLINE = 60.0
POINT = 0.01


@dataclass(frozen=True)
class SeededPair:
    """One seeded federation at equal speed and slowed with its schedule pinned, and the slow site's pinned steps."""

    seed: int
    equal: dict[str, Any]
    scheduled: dict[str, Any]
    pinned: int


def pinned_plan(steps: int) -> Callable[[LocalWorkScheduler, list[int]], dict[int, int]]:
    """A `LocalWorkScheduler.plan` that gives hospital-SLOW `steps` in every round and the others their full work."""

    def plan(self: LocalWorkScheduler, nodes: list[int]) -> dict[int, int]:
        self.planned = {node: steps for node in nodes if node == SLOW}
        return dict(self.planned)

    return plan


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> DemoSplit:
    return write_demo_split(tmp_path_factory.mktemp("synthetic"), dataset="synthetic", hospitals=3)


@pytest.fixture(scope="module")
def seeded_pairs(tmp_path_factory: pytest.TempPathFactory, synthetic: DemoSplit) -> list[SeededPair]:
    """Per seed of ACCURACY_SEEDS the same federation twice: at equal speed without a deadline, then hospital-SLOW
    slowed with one, its steps pinned (PINNED_SHARE).

    One torch thread: on a shared 2-core machine torch's default intra-op threads wait on each other, and a
    step's time then swings 10-100x."""
    threads = torch.get_num_threads()
    pairs = []
    with pytest.MonkeyPatch.context() as mp:  # the task identity a ServerApp process would have (conftest)
        mp.setattr(TaskIdentity, "_task_id", 1)
        mp.setattr(TaskIdentity, "_run_id", RUN)
        mp.setattr(TaskIdentity, "_node_id", 0)
        torch.set_num_threads(1)
        try:
            for seed in ACCURACY_SEEDS:
                root = tmp_path_factory.mktemp(f"accuracy-{seed}")
                config = {**ACCURACY_ROUNDS, "seed": seed}
                with pytest.MonkeyPatch.context() as pin:
                    equal = run_loopback(root / "equal", synthetic, slowed=False, config=config)
                    full = equal["rounds"][0]["sites"][f"hospital-{SLOW}"]["full_steps"]
                    pinned = max(1, round(PINNED_SHARE * full))
                    pin.setattr(LocalWorkScheduler, "plan", pinned_plan(pinned))
                    scheduled_config = {**config, "round-deadline": ACCURACY_DEADLINE}
                    scheduled = run_loopback(root / "scheduled", synthetic, slowed=True, config=scheduled_config)
                pairs.append(SeededPair(seed=seed, equal=equal, scheduled=scheduled, pinned=pinned))
        finally:
            torch.set_num_threads(threads)
    return pairs


def test_the_slowed_hospital_takes_exactly_its_scheduled_steps_while_the_others_and_equal_speed_train_in_full(
    seeded_pairs: list[SeededPair],
) -> None:
    slow = f"hospital-{SLOW}"
    for pair in seeded_pairs:
        equal, scheduled = pair.equal, pair.scheduled
        assert equal["status"] == scheduled["status"] == "completed"
        for entry in equal["rounds"]:  # no deadline: everyone trains its full local epochs
            assert all(site["local_steps"] == site["full_steps"] for site in entry["sites"].values())
        assert all(entry["round_deadline"] == ACCURACY_DEADLINE for entry in scheduled["rounds"])
        assert all(entry["deadline_aggregation"] == "fedavg" for entry in scheduled["rounds"])  # the default
        for entry in scheduled["rounds"]:
            for name, site in entry["sites"].items():
                # The slow site took exactly the steps it was given, the others their full work: the accuracy below
                # compares runs whose steps do not depend on the machine's load.
                expected = pair.pinned if name == slow else site["full_steps"]
                assert site["local_steps"] == expected, (pair.seed, name, site)
            assert pair.pinned < entry["sites"][slow]["full_steps"]  # the slow site's rounds are shortened


def test_slowed_scheduled_federations_end_within_one_point_of_equal_speed_on_average_over_seeds(
    seeded_pairs: list[SeededPair], synthetic: DemoSplit
) -> None:
    gaps = {}
    for pair in seeded_pairs:
        at_equal_speed, slowed = holdout_accuracy(pair.equal, synthetic), holdout_accuracy(pair.scheduled, synthetic)
        assert at_equal_speed is not None and slowed is not None
        # Not saturated: a point either way could show (0.83-0.86 after 10 rounds at equal speed on this data set).
        assert 0.7 < at_equal_speed < 0.95
        gaps[pair.seed] = round(slowed - at_equal_speed, 4)
    mean_gap = sum(gaps.values()) / len(gaps)
    assert abs(mean_gap) <= POINT, f"slowed minus equal speed, per seed: {gaps}; mean {mean_gap:+.4f}"
