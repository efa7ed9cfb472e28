"""Hospitals of unequal speed: the ServerApp's own loop (`server.app.main`) against the real ClientApp handlers
(loopback grid), with real Opacus and each hospital's real accountant file; one hospital slowed on purpose.

From its second round the slow hospital is scheduled the steps that fit `round-deadline`, takes exactly
those, and its accountant, its DP events and results.json all record that number; the others train in full.

Issue 18's accuracy claim, on a data set that can resolve it (`synthetic`: 2,400 held-out rows, where breast
cancer's 113 make one row 0.9 points), DP off so both runs are seeded and only the schedule and the aggregation
differ: the slowed, scheduled federation ends within one accuracy point of the same federation at equal speed.
It does not yet (FedNova overshoots, see the xfail below and docs/benchmarks.md); the deadline part holds.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Iterator
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


def _run(tmp_path: Path, split: DemoSplit, *, slowed: bool, config: dict[str, Any]) -> dict[str, Any]:
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
    results = _run(tmp_path, split, slowed=True, config=config)
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


# The accuracy claim. Local work is 2 epochs at batch 64 (about 60-95 steps per hospital and round), 12 rounds:
# enough that the equal-speed model has levelled off (its validation accuracy moves about 1 point from round to
# round by then) without reaching 100%, so a point can be won or lost.
ACCURACY_ROUNDS = {"num-rounds": 10, "local-epochs": 2, "batch-size": 64, "dp": False}
# round-deadline for the slowed run: this many times the median hospital round of the equal run, measured
# seconds earlier on this machine (bench/deadline.py sets it alike), so it binds for the slowed hospital (its
# steps take SLOWDOWN times longer) and leaves the others their full work at the load the machine is under.
DEADLINE_FACTOR = 1.5
POINT = 0.01


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> DemoSplit:
    return write_demo_split(tmp_path_factory.mktemp("synthetic"), dataset="synthetic", hospitals=3)


@pytest.fixture(scope="module")
def equal_and_scheduled(
    tmp_path_factory: pytest.TempPathFactory, synthetic: DemoSplit
) -> Iterator[tuple[dict[str, Any], dict[str, Any], float]]:
    """The same federation twice: at equal speed without a deadline, then hospital-SLOW slowed with one.

    One torch thread: on a shared 2-core machine torch's default intra-op threads wait on each other, and a
    step's time then swings 10-100x, which the schedule (seconds per step) would follow."""
    threads = torch.get_num_threads()
    with pytest.MonkeyPatch.context() as mp:  # the task identity a ServerApp process would have (conftest)
        mp.setattr(TaskIdentity, "_task_id", 1)
        mp.setattr(TaskIdentity, "_run_id", RUN)
        mp.setattr(TaskIdentity, "_node_id", 0)
        torch.set_num_threads(1)
        try:
            root = tmp_path_factory.mktemp("accuracy")
            equal = _run(root / "equal", synthetic, slowed=False, config=ACCURACY_ROUNDS)
            typical = statistics.median(s["round_seconds"] for e in equal["rounds"][1:] for s in e["sites"].values())
            deadline = round(DEADLINE_FACTOR * typical, 2)
            scheduled_config = {**ACCURACY_ROUNDS, "round-deadline": deadline}
            scheduled = _run(root / "scheduled", synthetic, slowed=True, config=scheduled_config)
        finally:
            torch.set_num_threads(threads)
    yield equal, scheduled, deadline


def test_the_slowed_hospital_is_cut_and_ends_each_round_by_the_deadline_while_equal_speed_trains_in_full(
    equal_and_scheduled: tuple[dict[str, Any], dict[str, Any], float],
) -> None:
    equal, scheduled, deadline = equal_and_scheduled
    slow = f"hospital-{SLOW}"
    assert equal["status"] == scheduled["status"] == "completed"
    for entry in equal["rounds"]:  # no deadline: everyone trains its full local epochs
        assert all(site["local_steps"] == site["full_steps"] for site in entry["sites"].values())
    sites = [entry["sites"][slow] for entry in scheduled["rounds"]]
    assert all(entry["round_deadline"] == deadline for entry in scheduled["rounds"])
    assert all(site["round_seconds"] <= deadline + MARGIN_S for site in sites), sites
    assert all(site["scheduled_steps"] is not None for site in sites[1:])  # scheduled from its speed after round 1
    # The deadline binds: DEADLINE_FACTOR times the typical equal-speed round, so a SLOWDOWN-times slower site
    # fits about a third of its steps (a round may differ: the machine's load moves between the two runs).
    assert sum(site["local_steps"] for site in sites) <= 0.75 * sum(site["full_steps"] for site in sites), sites


@pytest.mark.xfail(
    strict=True,
    reason="FedNova (server/fednova.py) scales a short round's update by tau_eff / tau_i, which overshoots once the "
    "long rounds level off (Adam's first steps, about the learning rate on every weight, make it worse): 0.51-0.80 "
    "here against 0.83 at equal speed (docs/benchmarks.md, issue 18). Remove this marker with the fix.",
)
def test_a_slowed_scheduled_federation_ends_within_one_point_of_the_equal_speed_one(
    equal_and_scheduled: tuple[dict[str, Any], dict[str, Any], float], synthetic: DemoSplit
) -> None:
    equal, scheduled, _ = equal_and_scheduled
    at_equal_speed, slowed = holdout_accuracy(equal, synthetic), holdout_accuracy(scheduled, synthetic)
    assert at_equal_speed is not None and slowed is not None
    # Not saturated: a point either way could show (0.83 after 10 rounds at equal speed on this data set).
    assert 0.7 < at_equal_speed < 0.95
    sites = [entry["sites"][f"hospital-{SLOW}"] for entry in scheduled["rounds"]]
    share = sum(s["local_steps"] for s in sites) / sum(s["full_steps"] for s in sites)
    assert abs(slowed - at_equal_speed) <= POINT, (
        f"equal speed {at_equal_speed:.4f}, slowed and scheduled {slowed:.4f} "
        f"(hospital-{SLOW} took {share:.0%} of its steps)"
    )
