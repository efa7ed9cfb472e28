"""Bringing a local federation's coordinator back after a crash, and the demo's supervisor that does it.

`restart_superlink` and `resume_run` are what a deployment's supervisor (compose's `restart:`) and its
operator (`fedcare run resume`) do, for a `LocalFederation` that owns its processes (docs/resume.md).
`follow_resuming` is the demo's supervisor: a SuperLink that exited is restarted on its database, and a
run whose coordinator crashed (the SuperLink died, or Flower ended the run while results.json still says
`running`: the ServerApp was killed before it could record anything) is resumed from its last
checkpoint. A run that failed for a reason of its own (results.json says `failed`) is not.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import psutil
from rich.console import Console

from fedcare.federation import LocalFederation
from fedcare.processes import FederationError
from server.checkpoint import plan_resume

RESUME_ATTEMPTS = 3


def restart_superlink(fed: LocalFederation) -> None:
    """Start the SuperLink again after it died: same ports, same `--database`, so registered node keys and
    earlier runs survive and the SuperNodes reconnect by themselves. The ServerApp of the run that was in
    flight is stopped (a supervisor's job; the warm executor itself waits for the SuperLink and stays)."""
    for proc in [p for p in fed.processes if p.name == "superlink"]:
        fed.kill(proc)
    executor = fed.serverapp_executor
    if executor is not None and executor.popen.poll() is None:
        children = psutil.Process(executor.popen.pid).children(recursive=True)
        fed.remember_children()
        for child in children:
            child.kill()
        psutil.wait_procs(children, timeout=10)
    fed.start_superlink()


def resume_run(fed: LocalFederation, *, app_dir: Path, run_dir: Path) -> int:
    """Submit the run in `run_dir` again from its last checkpoint (`fedcare run resume`); the new Flower run id."""
    return fed.submit(app_dir=app_dir, run_config=plan_resume(run_dir).run_config)


def superlink_died(fed: LocalFederation) -> bool:
    link = next((p for p in fed.processes if p.name == "superlink"), None)
    return link is None or link.popen.poll() is not None


def coordinator_crashed(fed: LocalFederation, run_dir: Path) -> bool:
    """Whether the run ended because its coordinator died, not because of the run itself."""
    if superlink_died(fed):
        return True
    try:
        status = json.loads((run_dir / "results.json").read_text()).get("status")
    except (OSError, ValueError):
        return False
    return status == "running"


def follow_resuming(
    fed: LocalFederation,
    follow: Callable[..., str],
    *,
    run_dir: Path,
    app_dir: Path,
    flower_run_id: int,
    console: Console,
) -> str:
    """Follow the run (`follow(run_id=flower_run_id)` returns Flower's final status); after a coordinator crash
    restart what died and resume, up to RESUME_ATTEMPTS times. Returns the last submission's status."""
    for attempt in range(RESUME_ATTEMPTS + 1):
        try:
            status = follow(run_id=flower_run_id)
        except FederationError:
            if not superlink_died(fed):
                raise
            status = "superlink-died"
        if status == "finished:completed" or attempt == RESUME_ATTEMPTS or not coordinator_crashed(fed, run_dir):
            return status
        if superlink_died(fed):
            console.print("[yellow]the SuperLink died; restarting it on its database[/]")
            restart_superlink(fed)
        flower_run_id = resume_run(fed, app_dir=app_dir, run_dir=run_dir)
        console.print(f"[yellow]the coordinator crashed; run {run_dir.name} resumed as Flower run {flower_run_id}[/]")
    return status
