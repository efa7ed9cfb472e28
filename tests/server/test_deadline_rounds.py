"""Hospitals of unequal speed: the ServerApp's own loop (`server.app.main`) against the real ClientApp handlers
(loopback grid), with real Opacus and each hospital's real accountant file; one hospital slowed on purpose.

From its second round the slow hospital is scheduled the steps that fit `round-deadline`, takes exactly
those, and its accountant, its DP events and results.json all record that number; the others train in full.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from flwr.app import Context, RecordDict

from client.accountant_state import HospitalAccountant
from common.demo_data import DemoSplit, write_demo_split
from server.app import main
from tests.server.loopback import RUN, LoopbackGrid

pytestmark = pytest.mark.usefixtures("serverapp_identity")
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


@pytest.fixture(scope="module")
def split(tmp_path_factory: pytest.TempPathFactory) -> DemoSplit:
    return write_demo_split(tmp_path_factory.mktemp("data"), dataset="breast-cancer", hospitals=3)


def _run(tmp_path: Path, split: DemoSplit) -> dict[str, Any]:
    hospitals = {
        node: {
            "institution": f"hospital-{node}",
            "data-path": str(path),
            "state-dir": str(tmp_path / f"state-{node}"),
            **({"test-slowdown": SLOWDOWN} if node == SLOW else {}),
        }
        for node, path in enumerate(split.hospital_paths, start=1)
    }
    run_config = {
        "schema-path": str(split.schema_path),
        "results-dir": str(tmp_path / "runs"),
        "num-rounds": 2,
        "local-epochs": LOCAL_EPOCHS,
        "batch-size": 8,
        "min-nodes": 3,
        "poll-interval": 0.01,
        "round-deadline": DEADLINE,
    }
    context = Context(run_id=RUN, node_id=0, node_config={}, state=RecordDict(), run_config=run_config)
    main(LoopbackGrid(hospitals), context)  # type: ignore[arg-type]
    return json.loads((tmp_path / "runs" / str(RUN) / "results.json").read_text())


def test_a_slow_hospital_shortens_its_own_round_and_is_charged_for_the_steps_it_took(
    tmp_path: Path, split: DemoSplit
) -> None:
    results = _run(tmp_path, split)
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
