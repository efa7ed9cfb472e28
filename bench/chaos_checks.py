"""The invariants a chaos trial must keep, each returned as a violation (a dict a person can act on).

- every round is aggregated, or failed with a reason; the run completes;
- a run whose coordinator was killed resumed (results.json `resumed`) and completed;
- for every hospital, the ledger's epsilon is at least its own accountant's epsilon for the same events, and
  the ledger holds every DP event the hospital's accountant holds for the run, once the outbox is drained;
- no process and no temp file outlives the bed (`leftover_violations`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bench.chaos_bed import HOSPITALS, ChaosBed
from bench.chaos_faults import COORDINATOR_FAULTS, ROUNDS, TrialRun
from server.budget_client.connection import BudgetServiceError

Violation = dict[str, Any]
TOLERANCE = 1e-6  # relative: the ledger recomputes epsilon with the same accountant


def trial_violations(bed: ChaosBed, run: TrialRun, *, outbox_left: int) -> list[Violation]:
    trial = run.trial

    def violation(invariant: str, **details: Any) -> Violation:
        return {"trial": trial.index, "mode": trial.mode, "fault": trial.fault, "invariant": invariant, **details}

    if run.run_dir is None or not (run.run_dir / "results.json").is_file():
        return [violation("results", detail="no results.json", status=run.status)]
    results = json.loads((run.run_dir / "results.json").read_text())
    out = []
    if run.status != "finished:completed" or results.get("status") != "completed":
        out.append(violation("completes", flower=run.status, results=results.get("status"), error=results.get("error")))
    rounds = results.get("rounds", [])
    if [r.get("round") for r in rounds] != list(range(1, ROUNDS + 1)):
        out.append(violation("every round accounted for", rounds=[r.get("round") for r in rounds]))
    for entry in rounds:
        if not (entry.get("status") == "aggregated" or (entry.get("status") == "failed" and entry.get("reason"))):
            out.append(violation("aggregated or failed with a reason", round=entry))
    if trial.fault in COORDINATOR_FAULTS and run.injected and not results.get("resumed"):
        out.append(violation("resumes", detail="the coordinator was killed but results.json has no `resumed`"))
    if outbox_left:
        out.append(violation("outbox drained", waiting=outbox_left))
    rejected = bed.runs / "budget-outbox" / "rejected.jsonl"
    if rejected.is_file() and rejected.read_text().strip():
        out.append(violation("no event rejected", rejected=rejected.read_text().strip().splitlines()[-3:]))
    return out + _ledger_violations(bed, run, violation)


def _ledger_violations(bed: ChaosBed, run: TrialRun, violation: Any) -> list[Violation]:
    run_id = str(run.flower_ids[0])  # the fedcare run id: the first submission's (docs/resume.md)
    with bed.admin() as admin:
        try:
            ledger = {row["institution"]: row for row in admin.run_budget(run_id)["institutions"]}
        except BudgetServiceError:  # 404: the ledger holds no event of this run
            ledger = {}
    out = []
    for name in HOSPITALS:
        events = [e for e in _local_events(bed.state_dir(name)) if str(e["run_id"]) == run_id]
        if not events:
            continue
        rounds = sorted(int(e["server_round"]) for e in events)
        if len(rounds) != len(set(rounds)):
            out.append(violation("charged once per round", hospital=name, local_rounds=rounds))
        row = ledger.get(name)
        if row is None or int(row["rounds"]) < len(set(rounds)):
            out.append(
                violation("no DP event missing", hospital=name, local_rounds=rounds, ledger=row and row["rounds"])
            )
            continue
        local_epsilon = max(float(e["epsilon"]) for e in events)
        if float(row["epsilon_after"]) < local_epsilon * (1 - TOLERANCE):
            out.append(
                violation(
                    "ledger epsilon >= local epsilon",
                    hospital=name,
                    ledger=row["epsilon_after"],
                    local=local_epsilon,
                )
            )
    return out


def _local_events(state_dir: Path) -> list[dict[str, Any]]:
    path = state_dir / "privacy-accountant.json"
    return json.loads(path.read_text())["events"] if path.is_file() else []


def leftover_violations(bed: ChaosBed, trials: list[int]) -> list[Violation]:
    """After the bed stopped: what it left behind, charged to the trials it served."""
    left = bed.leftovers()
    return [
        {"trials": trials, "invariant": f"no {kind} left behind", "left": what} for kind, what in left.items() if what
    ]
