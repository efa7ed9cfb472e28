"""The chaos soak's schedule and its faults: which part of the federation dies in which trial, and when.

A trial is one fedcare run on a `ChaosBed`. Its fault strikes once the run has checkpointed round
`after_round`, `delay` seconds later. A coordinator fault (ServerApp, SuperLink) is followed by what a
supervisor and an operator do: restart what died, `fedcare run resume` (fedcare.coordinator_recovery).
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil

from bench.chaos_bed import HOSPITALS, ChaosBed
from fedcare.coordinator_recovery import restart_superlink, resume_run
from server.checkpoint import read_checkpoint
from tests.integration.conftest import wait_finished

FAULTS = (
    "kill-supernode",
    "kill-clientapp",
    "kill-serverapp",
    "kill-superlink",
    "kill-budget",
    "corrupt-update",
    "budget-down",
)
COORDINATOR_FAULTS = frozenset({"kill-serverapp", "kill-superlink"})
MODES = ("he", "secagg", "plain")
ROUNDS = 3
RUN_TIMEOUT = 600.0


@dataclass(frozen=True)
class Trial:
    index: int
    mode: str
    fault: str
    after_round: int  # the fault strikes once this round is checkpointed ...
    delay: float  # ... and this many seconds have passed
    victim: str  # the hospital a hospital-side fault hits


@dataclass
class TrialRun:
    """What happened in a trial, for the checks and the report."""

    trial: Trial
    run_dir: Path | None = None
    flower_ids: list[int] = field(default_factory=list)
    injected: bool = False
    status: str = ""
    resume_seconds: float | None = None
    notes: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return {**asdict(self.trial), "injected": self.injected, "status": self.status, "notes": self.notes}


def schedule(
    *,
    seed: int,
    trials: int,
    faults: tuple[str, ...] = FAULTS,
    modes: tuple[str, ...] = MODES,
    after_rounds: tuple[int, int] = (1, ROUNDS - 1),
    max_delay: float = 1.5,
) -> list[Trial]:
    """Modes alternate; faults cover every kind first (in a seeded order), then are drawn at random, each to
    strike after a round in `after_rounds` (inclusive) and a delay of up to `max_delay` s.
    A corrupted update is not drawn for SecAgg+ (a hospital's masked vector is unreadable by design)."""
    rng = random.Random(seed)
    pending = list(faults)
    rng.shuffle(pending)
    out = []
    for index in range(trials):
        mode = modes[index % len(modes)]
        fits = [f for f in pending if not (mode == "secagg" and f == "corrupt-update")]
        if fits:
            fault = fits[0]
            pending.remove(fault)
        else:
            choices = [f for f in faults if not (mode == "secagg" and f == "corrupt-update")]
            if not choices:
                raise ValueError("SecAgg+ trials need a fault other than corrupt-update")
            fault = rng.choice(choices)
        after = rng.randint(*after_rounds)
        out.append(Trial(index, mode, fault, after, round(rng.uniform(0.0, max_delay), 2), rng.choice(HOSPITALS)))
    return out


def run_trial(bed: ChaosBed, trial: Trial, *, app_dir: Path) -> TrialRun:
    """Submit a run, inject the trial's fault, recover as an operator would, and wait for the end."""
    record = TrialRun(trial)
    fed = bed.fed
    if trial.fault == "budget-down":
        bed.budget.stop()
        record.injected = True
    if trial.fault == "corrupt-update":
        bed.chaos_file(trial.victim).write_text(json.dumps({"update": "nan", "from_round": trial.after_round}))
    try:
        flower_id = fed.submit(app_dir=app_dir, run_config=bed.run_config(trial.mode, rounds=ROUNDS))
        record.flower_ids.append(flower_id)
        run_dir = record.run_dir = bed.runs / str(flower_id)
        if trial.fault not in ("corrupt-update", "budget-down"):  # those two struck already
            _strike(bed, trial, record, run_dir, app_dir=app_dir)
        record.status = wait_finished(fed, record.flower_ids[-1], timeout=RUN_TIMEOUT)
    finally:
        bed.chaos_file(trial.victim).unlink(missing_ok=True)
    if trial.fault == "corrupt-update":
        record.injected = _rejected(run_dir, trial.victim)
        if not record.injected:
            record.notes.append(f"no round rejected {trial.victim}'s corrupted update")
    if trial.fault == "kill-supernode":  # the restarted node must be back before the next run
        fed.wait_for_node(bed.nodes[trial.victim])
    fed.remember_children()
    return record


def _strike(bed: ChaosBed, trial: Trial, record: TrialRun, run_dir: Path, *, app_dir: Path) -> None:
    fed = bed.fed
    done = _wait_for_round(run_dir, trial.after_round, flower_id=record.flower_ids[-1], bed=bed)
    if done is None:
        record.notes.append(f"the run ended before round {trial.after_round} was checkpointed; no fault")
        return
    time.sleep(trial.delay)
    killed = time.monotonic()
    if trial.fault == "kill-supernode":
        fed.kill(bed.nodes[trial.victim])
        bed.start_hospital(trial.victim)  # the same kit and state folder: it rejoins
        record.injected = True
    elif trial.fault == "kill-clientapp":
        record.injected = _kill_clientapp(bed, trial.victim)
        if not record.injected:
            record.notes.append(f"{trial.victim} ran no ClientApp before the run ended; no fault")
    elif trial.fault == "kill-budget":
        bed.budget.kill()
        record.injected = True
        time.sleep(2.0)  # a supervisor restarts it
        bed.budget.start()
    elif trial.fault in COORDINATOR_FAULTS:
        if _finished(run_dir):
            record.notes.append("the run completed before the coordinator could be killed; no fault")
            return
        fed.remember_children()
        if trial.fault == "kill-superlink":
            fed.kill(next(p for p in fed.processes if p.name == "superlink"))
            restart_superlink(fed)
        else:
            _kill_serverapp(bed)
        record.injected = True
        record.flower_ids.append(resume_run(fed, app_dir=app_dir, run_dir=run_dir))
        later = _wait_for_round(run_dir, done + 1, flower_id=record.flower_ids[-1], bed=bed)
        record.resume_seconds = round(time.monotonic() - killed, 1) if later is not None else None


def _rejected(run_dir: Path, victim: str) -> bool:
    """Whether the server rejected the victim's update in some round (the corruption reached it)."""
    try:
        rounds = json.loads((run_dir / "results.json").read_text())["rounds"]
    except (OSError, ValueError, KeyError):
        return False
    return any(victim in json.dumps(r.get("rejected", [])) for r in rounds)


def _finished(run_dir: Path) -> bool:
    try:
        return json.loads((run_dir / "results.json").read_text()).get("status") != "running"
    except (OSError, ValueError):
        return False


def _wait_for_round(run_dir: Path, at_least: int, *, flower_id: int, bed: ChaosBed) -> int | None:
    """The checkpointed round once it is `at_least`; None when the run ended first."""
    deadline = time.monotonic() + RUN_TIMEOUT
    while time.monotonic() < deadline:
        checkpoint = read_checkpoint(run_dir)
        if checkpoint is not None and checkpoint.completed_round >= at_least:
            return checkpoint.completed_round
        if _finished(run_dir) or bed.fed.run_status(flower_id).startswith("finished"):
            return None
        time.sleep(0.2)
    raise TimeoutError(f"{run_dir}: round {at_least} not checkpointed within {RUN_TIMEOUT:.0f} s")


def _kill_serverapp(bed: ChaosBed) -> None:
    """SIGKILL the ServerApp: the coordinator's warm executor's forked child (the executor survives)."""
    executor = bed.fed.serverapp_executor
    assert executor is not None
    children = psutil.Process(executor.popen.pid).children(recursive=True)
    for child in children:
        child.kill()
    psutil.wait_procs(children, timeout=10)


def _kill_clientapp(bed: ChaosBed, victim: str, *, patience: float = 120.0) -> bool:
    """SIGKILL the first ClientApp (a warm executor's forked child) the victim's node runs from now on."""
    node = psutil.Process(bed.nodes[victim].popen.pid)
    deadline = time.monotonic() + patience
    while time.monotonic() < deadline:
        for proc in node.children(recursive=True):
            try:
                parent = proc.parent()
                if parent is not None and "fedcare.warm_executor" in " ".join(parent.cmdline()):
                    bed.fed.remember_children()
                    proc.kill()
                    return True
            except psutil.NoSuchProcess:
                continue
        time.sleep(0.05)
    return False
