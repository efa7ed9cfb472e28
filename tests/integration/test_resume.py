"""A run survives a SIGKILL of its ServerApp and of its SuperLink, and completes with every round accounted for.

One real federation (TLS, node authentication, 2 hospitals, DP on, the budget service) and one plain-mode
run of 3 rounds of a tiny MLP, in which two crashes happen while a round is in flight:

1. the ServerApp (the warm executor's forked child) is SIGKILLed; `fedcare run resume` goes on;
2. the SuperLink is SIGKILLed and restarted on its database, as a supervisor would; the hospitals'
   nodes reconnect by themselves; `fedcare run resume` goes on again.

Both crashes share one federation to keep the suite's time (docs/resume.md says what each step does).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import psutil
import pytest

from common.demo_data import DemoSplit
from fedcare.coordinator_recovery import restart_superlink, resume_run
from fedcare.federation import LocalFederation
from server.budget.process import running_budget_service
from server.budget_client.admin import BudgetAdmin
from server.checkpoint import read_checkpoint
from tests.integration.conftest import APP_DIR, assert_all_exited, wait_finished

pytestmark = pytest.mark.slow
HOSPITALS = ("hospital-1", "hospital-2")
ROUNDS = 3


def _wait_for_round(run_dir: Path, *, at_least: int, timeout: float = 180.0) -> int:
    """The round the run's last checkpoint accounts for, once it is `at_least`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        checkpoint = read_checkpoint(run_dir)
        if checkpoint is not None and checkpoint.completed_round >= at_least:
            return checkpoint.completed_round
        time.sleep(0.2)
    raise AssertionError(f"{run_dir}: round {at_least} not checkpointed within {timeout:.0f} s")


def _kill_serverapp(fed: LocalFederation) -> None:
    """SIGKILL the ServerApp: the warm executor's forked child running the run (the executor survives)."""
    assert fed.serverapp_executor is not None
    children = psutil.Process(fed.serverapp_executor.popen.pid).children(recursive=True)
    assert children, "no ServerApp is running"
    fed.remember_children()
    for child in children:
        child.kill()
    psutil.wait_procs(children, timeout=10)


def test_a_run_survives_sigkill_of_its_serverapp_and_of_its_superlink(
    tmp_path: Path, breast_cancer_split: DemoSplit
) -> None:
    split, runs, started = breast_cancer_split, tmp_path / "runs", time.monotonic()
    timeline: dict[str, float] = {}
    admin_token = "integration-admin-" + "r" * 32
    with (
        running_budget_service(database_url=f"sqlite:///{tmp_path / 'ledger.db'}", admin_token=admin_token) as url,
        BudgetAdmin(url, admin_token) as admin,
        LocalFederation(tmp_path / "fed") as fed,
    ):
        for name in HOSPITALS:
            admin.ensure_institution(name, 10.0, 1e-5)
        token_file = tmp_path / "aggregator-token"
        token_file.write_text(admin.create_aggregator_token("resume-test"))
        fed.start_superlink()
        nodes = [
            fed.add_hospital(
                institution=name, data_path=path, node_config={"state-dir": str(tmp_path / name)}, wait=False
            )
            for name, path in zip(HOSPITALS, split.hospital_paths[: len(HOSPITALS)], strict=True)
        ]
        for node in nodes:
            fed.wait_for_node(node)
        first = fed.submit(
            app_dir=APP_DIR,
            run_config={
                "num-rounds": ROUNDS,
                "local-epochs": 1,
                "schema-path": str(split.schema_path),
                "results-dir": str(runs),
                "min-nodes": len(HOSPITALS),
                "budget-url": url,
                "budget-token-file": str(token_file),
            },
        )
        run_dir = runs / str(first)
        timeline["submitted"] = time.monotonic() - started

        # 1. The ServerApp dies while round 2 (or later) is in flight.
        done = _wait_for_round(run_dir, at_least=1)
        _kill_serverapp(fed)
        timeline["serverapp killed"] = time.monotonic() - started
        second = resume_run(fed, app_dir=APP_DIR, run_dir=run_dir)  # its lock waits for the old ServerApp, if need be

        # 2. The SuperLink dies while a later round is in flight; a supervisor restarts it on its database.
        _wait_for_round(run_dir, at_least=done + 1)
        fed.remember_children()
        fed.kill(next(p for p in fed.processes if p.name == "superlink"))
        timeline["superlink killed"] = time.monotonic() - started
        restart_superlink(fed)
        third = resume_run(fed, app_dir=APP_DIR, run_dir=run_dir)
        timeline["resumed again"] = time.monotonic() - started
        status = wait_finished(fed, third, timeout=300)
        timeline["completed"] = time.monotonic() - started
        fed.remember_children()
        ledger = admin.run_budget(first)
    print("\nseconds since the test started:", {k: round(v, 1) for k, v in timeline.items()})
    assert_all_exited(fed.seen_pids)
    assert status == "finished:completed"

    results = json.loads((run_dir / "results.json").read_text())
    assert results["status"] == "completed" and results["run_id"] == first
    # Every round is accounted for exactly once: aggregated, or failed with a reason.
    assert [entry["round"] for entry in results["rounds"]] == list(range(1, ROUNDS + 1))
    for entry in results["rounds"]:
        assert entry["status"] == "aggregated" or (entry["status"] == "failed" and entry["reason"]), entry
    assert results["rounds"][-1]["status"] == "aggregated"
    resumed = results["resumed"]
    assert [r["flower_run_id"] for r in resumed] == [str(second), str(third)]
    assert 2 <= resumed[0]["from_round"] < resumed[1]["from_round"] <= ROUNDS + 1  # ROUNDS + 1: the final scoring

    # No round is charged twice: each hospital's accountant holds one event per (run, round), all under the
    # run's first id; the ledger holds the same rounds and the same epsilon.
    rows = {row["institution"]: row for row in ledger["institutions"]}
    for name in HOSPITALS:
        events = json.loads((tmp_path / name / "privacy-accountant.json").read_text())["events"]
        keys = [(e["run_id"], e["server_round"]) for e in events]
        assert len(keys) == len(set(keys)), (name, keys)
        assert {run for run, _ in keys} == {str(first)}
        trained = {r for _, r in keys}
        aggregated = {e["round"] for e in results["rounds"] if name in e["participants"]}
        assert aggregated <= trained, (name, aggregated, trained)
        assert rows[name]["rounds"] == len(keys), (name, rows[name], keys)
        assert rows[name]["epsilon_after"] == pytest.approx(events[-1]["epsilon"], rel=1e-6)
