"""A real federation: SuperLink + 3 SuperNodes as OS processes, gRPC over TLS on 127.0.0.1."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from client.training import evaluate
from common.data import load_hospital_table
from common.demo_data import DemoSplit
from common.models import build_model, parameter_count
from common.schema import load_schema
from fedcare.federation import LocalFederation
from server.budget.process import running_budget_service
from server.budget_client.admin import BudgetAdmin
from tests.integration.conftest import APP_DIR, assert_all_exited, wait_finished

pytestmark = pytest.mark.slow
SEED = 42  # the ServerApp's default seed for the initial global model


def test_three_hospitals_two_rounds_improve_the_model(tmp_path: Path, breast_cancer_split: DemoSplit) -> None:
    """With the defaults (TLS, local DP with a per-run target of epsilon 3) and the budget service."""
    split = breast_cancer_split
    admin_token = "integration-admin-" + "x" * 32
    with (
        running_budget_service(database_url=f"sqlite:///{tmp_path / 'ledger.db'}", admin_token=admin_token) as url,
        BudgetAdmin(url, admin_token) as admin,
        LocalFederation(tmp_path / "fed") as fed,
    ):
        for i in range(1, 4):
            admin.ensure_institution(f"hospital-{i}", 10.0, 1e-5)
        token_file = tmp_path / "aggregator-token"
        token_file.write_text(admin.create_aggregator_token("integration-test"))
        fed.start_superlink()
        nodes = [
            fed.add_hospital(
                institution=f"hospital-{i}",
                data_path=path,
                node_config={"state-dir": str(tmp_path / f"state-{i}")},
                wait=False,
            )
            for i, path in enumerate(split.hospital_paths, start=1)
        ]
        fed.wait_for_nodes(nodes)
        run_id = fed.submit(
            app_dir=APP_DIR,
            run_config={
                "num-rounds": 2,
                "schema-path": str(split.schema_path),
                "results-dir": str(tmp_path / "runs"),
                "min-nodes": 3,
                "budget-url": url,
                "budget-token-file": str(token_file),
            },
        )
        status = wait_finished(fed, run_id)
        ledger = admin.run_budget(run_id)
        budgets = admin.budgets()
    assert_all_exited(fed.seen_pids)
    assert status == "finished:completed"

    results = json.loads((tmp_path / "runs" / str(run_id) / "results.json").read_text())
    schema = load_schema(split.schema_path)
    initial = build_model(schema, seed=SEED)
    assert results["status"] == "completed"
    assert results["privacy_mode"] == "plain"
    assert results["dp"]["enabled"] is True and results["dp"]["target_epsilon"] == 3.0
    assert results["parameter_count"] == parameter_count(initial)
    assert [r["round"] for r in results["rounds"]] == [1, 2]
    for entry in results["rounds"]:
        assert entry["status"] == "aggregated"
        assert entry["participants"] == ["hospital-1", "hospital-2", "hospital-3"]
        assert entry["rejected"] == []
        assert 0.0 <= entry["accuracy"] <= 1.0 and entry["loss"] > 0
        assert set(entry["epsilon"]) == {"hospital-1", "hospital-2", "hospital-3"}
        assert Path(entry["model_path"]).exists()
        # float32 both ways: every reply and every model sent down holds at least the model's 4 bytes a value
        assert set(entry["bytes_up"]) == {"hospital-1", "hospital-2", "hospital-3"}
        assert min([*entry["bytes_up"].values(), entry["bytes_down"]]) > 4 * results["parameter_count"]
    # Each hospital chose its noise once so that the whole run spends the target, no more.
    for name, eps in results["rounds"][-1]["epsilon"].items():
        assert 2.9 < eps <= 3.0, (name, eps)
        assert results["rounds"][0]["epsilon"][name] < eps

    # The ledger holds the events the hospitals reported, with their epsilon, unflagged.
    final_eps = results["rounds"][-1]["epsilon"]
    spending = {row["institution"]: row for row in ledger["institutions"]}
    assert set(spending) == {"hospital-1", "hospital-2", "hospital-3"}
    for name, row in spending.items():
        assert row["rounds"] == 2 and row["flagged_events"] == 0
        assert row["epsilon_after"] == pytest.approx(final_eps[name], rel=1e-6)
        assert budgets[name].epsilon_spent == pytest.approx(final_eps[name], rel=1e-6)

    # The global model must have improved on rows no hospital trained on.
    holdout = load_hospital_table(split.holdout_path, schema)
    final = build_model(schema)
    final.load_state_dict(torch.load(results["final_model_path"], weights_only=True))
    before = evaluate(initial, holdout, device=torch.device("cpu"))
    after = evaluate(final, holdout, device=torch.device("cpu"))
    assert after.loss < before.loss
    assert after.accuracy > before.accuracy + 0.2, (before, after)


def test_a_hospital_with_a_malformed_file_is_rejected_and_the_round_goes_on(
    tmp_path: Path, breast_cancer_split: DemoSplit
) -> None:
    split = breast_cancer_split
    broken = tmp_path / "broken.csv"
    lines = split.hospital_paths[2].read_text().splitlines()
    header = lines[0].split(",")
    row = lines[3].split(",")
    row[header.index("mean_radius")] = "twelve"
    lines[3] = ",".join(row)
    broken.write_text("\n".join(lines) + "\n")

    with LocalFederation(tmp_path / "fed") as fed:
        fed.start_superlink()
        paths = {"hospital-1": split.hospital_paths[0], "hospital-2": split.hospital_paths[1], "hospital-3": broken}
        fed.wait_for_nodes([fed.add_hospital(institution=n, data_path=p, wait=False) for n, p in paths.items()])
        run_id = fed.submit(
            app_dir=APP_DIR,
            run_config={
                "num-rounds": 1,
                "schema-path": str(split.schema_path),
                "results-dir": str(tmp_path / "runs"),
                "min-nodes": 3,
                "dp": False,
                "update-compression": "int8",  # and weights travel as int8, both ways
            },
        )
        status = wait_finished(fed, run_id)
    assert_all_exited(fed.seen_pids)
    assert status == "finished:completed"
    results = json.loads((tmp_path / "runs" / str(run_id) / "results.json").read_text())
    (entry,) = results["rounds"]
    assert results["update_compression"] == "int8"
    # int8: the weights take about 0.27x of float32's bytes; the round config (with the schema) and the reply's
    # status and metrics add a few KB that do not shrink
    float_model = 4 * results["parameter_count"]
    assert results["parameter_count"] < entry["bytes_down"] < 0.6 * float_model
    assert set(entry["bytes_up"]) == {"hospital-1", "hospital-2", "hospital-3"}  # the refusal is counted too
    assert all(
        results["parameter_count"] < entry["bytes_up"][h] < 0.6 * float_model for h in ("hospital-1", "hospital-2")
    )
    assert entry["bytes_up"]["hospital-3"] < results["parameter_count"]  # a refusal carries no weights
    assert entry["status"] == "aggregated"
    assert entry["participants"] == ["hospital-1", "hospital-2"]
    assert results["dp"] == {"enabled": False}
    assert entry["epsilon"] == {"hospital-1": None, "hospital-2": None}  # null while DP is off
    (rejection,) = entry["rejected"]
    assert rejection["institution"] == "hospital-3"
    assert rejection["code"] == "bad-local-data"
    assert (
        "row 3" in rejection["reason"]
        and "'mean_radius'" in rejection["reason"]
        and "broken.csv" in rejection["reason"]
    )
