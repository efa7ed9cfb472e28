"""Local DP across real processes: epsilon survives a killed SuperNode and a second run; budgets are enforced."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from client.accountant_state import HospitalAccountant
from client.dp_training import plan_round
from common.data import load_hospital_table, split_train_validation
from common.demo_data import DemoSplit
from common.dp_event import epsilon_of
from common.schema import load_schema
from fedcare.federation import LocalFederation
from tests.integration.conftest import APP_DIR, assert_all_exited, wait_finished

pytestmark = pytest.mark.slow
DELTA, NOISE, EPOCHS, BATCH = 1e-5, 1.0, 2, 32


def _round_event(split: DemoSplit, index: int) -> tuple[float, float, int]:
    schema = load_schema(split.schema_path)
    data = load_hospital_table(split.hospital_paths[index], schema)
    train, _ = split_train_validation(data, validation_fraction=0.2, seed=42)
    q, steps = plan_round(num_examples=len(train), batch_size=BATCH, epochs=EPOCHS)
    return (NOISE, q, steps)


def test_epsilon_continues_across_a_killed_supernode_and_a_second_run_and_budgets_stop_one_hospital(
    tmp_path: Path, breast_cancer_split: DemoSplit
) -> None:
    split, state = breast_cancer_split, tmp_path / "state"
    # hospital-3 can afford exactly the two rounds of run 1, not a third.
    h3 = _round_event(split, 2)
    limit_h3 = (
        epsilon_of([h3] * 2, accountant="rdp", delta=DELTA) + epsilon_of([h3] * 3, accountant="rdp", delta=DELTA)
    ) / 2
    run_config = {
        "schema-path": str(split.schema_path),
        "results-dir": str(tmp_path / "runs"),
        "min-nodes": 3,
        "noise-multiplier": NOISE,
        "target-epsilon": 0.0,
        "delta": DELTA,
        "local-epochs": EPOCHS,
        "batch-size": BATCH,
        "amp": "off",
    }

    def add(fed: LocalFederation, i: int, **extra: object):
        return fed.add_hospital(
            institution=f"hospital-{i}",
            data_path=split.hospital_paths[i - 1],
            node_config={"state-dir": str(state / f"h{i}"), **extra},
            wait=False,
        )

    with LocalFederation(tmp_path / "fed") as fed:
        fed.start_superlink()
        node1, _, _ = fed.wait_for_nodes([add(fed, 1), add(fed, 2), add(fed, 3, **{"epsilon-limit": limit_h3})])
        run1 = fed.submit(app_dir=APP_DIR, run_config={**run_config, "num-rounds": 2})
        assert wait_finished(fed, run1) == "finished:completed"

        fed.kill(node1)  # a crash: SIGKILL, no clean shutdown
        fed.wait_for_node(add(fed, 1))
        run2 = fed.submit(app_dir=APP_DIR, run_config={**run_config, "num-rounds": 1})
        assert wait_finished(fed, run2) == "finished:completed"
    assert_all_exited(fed.seen_pids)

    first = json.loads((tmp_path / "runs" / str(run1) / "results.json").read_text())
    second = json.loads((tmp_path / "runs" / str(run2) / "results.json").read_text())
    assert first["dp"]["enabled"] is True
    h1 = _round_event(split, 0)
    for rnd, entry in enumerate(first["rounds"], start=1):
        assert entry["participants"] == ["hospital-1", "hospital-2", "hospital-3"]
        expected = epsilon_of([h1] * rnd, accountant="rdp", delta=DELTA)
        assert entry["epsilon"]["hospital-1"] == pytest.approx(expected, rel=1e-9)
        event = entry["dp_events"]["hospital-1"]
        assert (event["noise_multiplier"], event["sample_rate"], event["steps"]) == pytest.approx(h1)
        assert event["accountant"] == "rdp" and event["delta"] == DELTA

    (entry,) = second["rounds"]
    # The restarted hospital-1 continues from its state file: its third round in total.
    assert entry["epsilon"]["hospital-1"] == pytest.approx(
        epsilon_of([h1] * 3, accountant="rdp", delta=DELTA), rel=1e-9
    )
    assert entry["epsilon"]["hospital-1"] > first["rounds"][-1]["epsilon"]["hospital-1"]
    # hospital-3 is out of budget: refused with a typed status, the others trained.
    assert entry["participants"] == ["hospital-1", "hospital-2"]
    refusals = {r["institution"]: r for r in entry["rejected"]}
    assert refusals["hospital-3"]["code"] == "budget-exhausted", entry["rejected"]
    # The killed SuperNode's old registration may still be listed; Flower answers for it with an error.
    others = [r for name, r in refusals.items() if name != "hospital-3"]
    assert all(r["code"] == "node-error" and r["institution"].startswith("node-") for r in others), entry["rejected"]
    assert entry["epsilon"]["hospital-3"] == pytest.approx(first["rounds"][-1]["epsilon"]["hospital-3"])
    ledger3 = HospitalAccountant.for_institution(state / "h3", "hospital-3")
    assert len(ledger3.history) == 2  # the refused round spent nothing
