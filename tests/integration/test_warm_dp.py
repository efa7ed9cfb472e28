"""DP on the warm executor, across real processes (one hospital started with `fedcare node start`).

* Two messages with everything else equal draw different noise: two one-round runs with the same seed,
  model, data and settings end in different models with DP on, and in the same model with DP off (which
  shows everything else really was equal). Children forked from one warm parent share no random state.
* A run with `local-workers = 2` (the forked ClientApp spawns 2 gloo workers) records one DP event for
  its round, with the single process's sample rate and steps, so the same epsilon.
* The accountant's crash safety holds when the executor kills a child mid-training: the round's spending
  was committed before training, so it stays counted (over-count, never under-count), the round records
  why it failed, and the next run starts from the committed state. It runs on conftest's `warm_hospital`,
  which test_warm_executor uses too.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from client.accountant_state import HospitalAccountant, epsilon_of
from client.dp_training import plan_round
from common.data import load_hospital_table, split_train_validation
from common.demo_data import DemoSplit
from common.schema import load_schema
from fedcare.federation import LocalFederation
from tests.integration.conftest import APP_DIR, WARM_MESSAGE_TIMEOUT, WarmHospital, assert_all_exited, wait_finished

pytestmark = pytest.mark.slow
DELTA, NOISE, BATCH = 1e-5, 1.0, 16


def _config(split: DemoSplit, runs: Path, **extra: object) -> dict[str, object]:
    return {
        "schema-path": str(split.schema_path),
        "results-dir": str(runs),
        "min-nodes": 1,
        "num-rounds": 1,
        "privacy-mode": "plain",
        "noise-multiplier": NOISE,
        "target-epsilon": 0.0,
        "delta": DELTA,
        "batch-size": BATCH,
        "amp": "off",
        **extra,
    }


def _final_model(runs: Path, run_id: int) -> dict[str, torch.Tensor]:
    results = json.loads((runs / str(run_id) / "results.json").read_text())
    assert results["rounds"][0]["status"] == "aggregated", results["rounds"]
    return torch.load(results["final_model_path"], weights_only=True)


def test_two_messages_alike_in_all_else_draw_different_dp_noise(tmp_path: Path, breast_cancer_split: DemoSplit) -> None:
    runs = tmp_path / "runs"
    with LocalFederation(tmp_path / "fed") as fed:
        fed.start_superlink()
        fed.add_hospital(
            institution="hospital-1",
            data_path=breast_cancer_split.hospital_paths[0],
            node_config={"state-dir": str(tmp_path / "state"), "epsilon-limit": 1000.0},
        )
        models = {}
        for name, dp in (("dp-a", True), ("dp-b", True), ("plain-a", False), ("plain-b", False)):
            run_id = fed.submit(app_dir=APP_DIR, run_config=_config(breast_cancer_split, runs, dp=dp))
            assert wait_finished(fed, run_id) == "finished:completed"
            models[name] = _final_model(runs, run_id)
        # The same federation, a third DP run on 2 local workers (gloo), spawned by the forked ClientApp.
        ddp_run = fed.submit(app_dir=APP_DIR, run_config=_config(breast_cancer_split, runs, **{"local-workers": 2}))
        assert wait_finished(fed, ddp_run) == "finished:completed"
        _final_model(runs, ddp_run)
    assert_all_exited(fed.seen_pids)

    # One DP event per round, whatever the worker count, and the single process's sample rate and steps.
    train, _ = split_train_validation(
        load_hospital_table(breast_cancer_split.hospital_paths[0], load_schema(breast_cancer_split.schema_path)),
        validation_fraction=0.2,
        seed=42,
    )
    one_round = (NOISE, *plan_round(num_examples=len(train), batch_size=BATCH, epochs=2))
    history = HospitalAccountant.for_institution(tmp_path / "state", "hospital-1").history
    assert history == [pytest.approx(one_round)] * 3  # dp-a, dp-b, and the 2-worker run
    (entry,) = json.loads((runs / str(ddp_run) / "results.json").read_text())["rounds"]
    assert entry["epsilon"]["hospital-1"] == pytest.approx(
        epsilon_of([one_round] * 3, accountant="rdp", delta=DELTA), rel=1e-9
    )

    def same(a: str, b: str) -> bool:
        return all(torch.equal(models[a][k], models[b][k]) for k in models[a])

    assert same("plain-a", "plain-b"), "without DP the two runs differ: something besides the noise is not equal"
    assert not same("dp-a", "dp-b"), "two DP messages produced the same model: they drew the same noise"


def test_a_child_killed_mid_training_leaves_its_spending_committed(tmp_path: Path, warm_hospital: WarmHospital) -> None:
    """Every process the federation started is gone once it stopped: the fixture checks that."""
    split, runs, state, fed = warm_hospital.split, tmp_path / "runs", warm_hospital.state, warm_hospital.fed
    schema = load_schema(split.schema_path)
    train, _ = split_train_validation(
        load_hospital_table(split.hospital_paths[0], schema), validation_fraction=0.2, seed=42
    )
    long_epochs, short_epochs = 400, 1  # 400 epochs of DP-SGD run far past the node's 8 s message timeout
    long_round = (NOISE, *plan_round(num_examples=len(train), batch_size=BATCH, epochs=long_epochs))
    short_round = (NOISE, *plan_round(num_examples=len(train), batch_size=BATCH, epochs=short_epochs))
    assert WARM_MESSAGE_TIMEOUT == 8.0 and not (state / "privacy-accountant.json").exists()  # nothing spent yet
    since = warm_hospital.log_size()  # this test's part of the node's log
    killed = fed.submit(app_dir=APP_DIR, run_config=_config(split, runs, **{"local-epochs": long_epochs}))
    assert wait_finished(fed, killed) == "finished:failed"  # its only round failed
    after_kill = HospitalAccountant.for_institution(state, "hospital-1").history
    resumed = fed.submit(app_dir=APP_DIR, run_config=_config(split, runs, **{"local-epochs": short_epochs}))
    assert wait_finished(fed, resumed) == "finished:completed"
    log = warm_hospital.log_since(since)

    assert "committed to" in log and "did not finish within 8 s and was killed" in log
    # Committed before training: the killed round counts in full although no update ever left.
    assert after_kill == [pytest.approx(long_round)]
    (failed,) = json.loads((runs / str(killed) / "results.json").read_text())["rounds"]
    assert failed["status"] == "failed" and failed["participants"] == []
    assert "did not finish within 8 s" in failed["rejected"][0]["reason"], failed["rejected"]
    # The next run starts from the committed state: its epsilon includes the killed round.
    (entry,) = json.loads((runs / str(resumed) / "results.json").read_text())["rounds"]
    assert entry["status"] == "aggregated"
    assert entry["epsilon"]["hospital-1"] == pytest.approx(
        epsilon_of([long_round, short_round], accountant="rdp", delta=DELTA), rel=1e-9
    )
