"""A run survives a SIGKILL of its ServerApp and of its SuperLink, and completes with every round accounted for.

One real federation (TLS, node authentication, 3 hospitals, DP on, the budget service: the chaos bed that
test_chaos used before, the `chaos_bed` fixture) and one plain-mode run of 3 rounds of a tiny MLP, in which two
crashes happen while a round is in flight:

1. the ServerApp (the warm executor's forked child) is SIGKILLed; `fedcare run resume` goes on;
2. the SuperLink is SIGKILLed and restarted on its database, as a supervisor would; the hospitals'
   nodes reconnect by themselves; `fedcare run resume` goes on again.

Both crashes share one run, and the run shares the bed, to keep the suite's time (docs/resume.md says what
each step does). That no process outlives the federation is checked when the bed stops.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import psutil
import pytest

from bench.chaos_bed import HOSPITALS, ChaosBed
from fedcare.coordinator_recovery import restart_superlink, resume_run
from fedcare.federation import LocalFederation
from server.checkpoint import read_checkpoint
from tests.integration.conftest import APP_DIR, wait_finished

pytestmark = pytest.mark.slow
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


def test_a_run_survives_sigkill_of_its_serverapp_and_of_its_superlink(chaos_bed: ChaosBed) -> None:
    bed, fed, started = chaos_bed, chaos_bed.fed, time.monotonic()  # the bed runs already: its start is not ours
    timeline: dict[str, float] = {}
    run_config = {**bed.run_config("plain", rounds=ROUNDS), "min-nodes": len(HOSPITALS)}
    first = fed.submit(app_dir=APP_DIR, run_config=run_config)  # fedcare's own app, not the bed's chaos copy
    run_dir = bed.runs / str(first)
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
    with bed.admin() as admin:
        ledger = admin.run_budget(first)
    print("\nseconds since the test started:", {k: round(v, 1) for k, v in timeline.items()})
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
    # run's first id; the ledger holds the same rounds and the same epsilon. (The accountants also hold the
    # bed's earlier runs: only this run's three Flower ids are looked at.)
    rows = {row["institution"]: row for row in ledger["institutions"]}
    ours = {str(first), str(second), str(third)}
    for name in HOSPITALS:
        every = json.loads((bed.state_dir(name) / "privacy-accountant.json").read_text())["events"]
        events = [e for e in every if str(e["run_id"]) in ours]
        keys = [(str(e["run_id"]), e["server_round"]) for e in events]
        assert len(keys) == len(set(keys)), (name, keys)
        assert {run for run, _ in keys} == {str(first)}
        trained = {r for _, r in keys}
        aggregated = {e["round"] for e in results["rounds"] if name in e["participants"]}
        assert aggregated <= trained, (name, aggregated, trained)
        assert rows[name]["rounds"] == len(keys), (name, rows[name], keys)
        assert rows[name]["epsilon_after"] == pytest.approx(events[-1]["epsilon"], rel=1e-6)
