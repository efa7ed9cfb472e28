"""The demo's supervisor: when the coordinator dies mid-run, bring it back and resume the run (docs/resume.md).

The demo owns every process of its federation, so it plays the part a deployment gives to compose's
`restart:` policy and the operator's `fedcare run resume`: a SuperLink that exited is restarted on its
database, and a run whose coordinator crashed (the SuperLink died, or Flower ended the run while
results.json still says `running`: the ServerApp was killed before it could record anything) is resumed
from its last checkpoint. A run that failed for a reason of its own (results.json says `failed`) is not.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from rich.console import Console

from fedcare.federation import LocalFederation
from fedcare.processes import FederationError

RESUME_ATTEMPTS = 3


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
    """Follow the run (`follow(run_id=flower_run_id)` returns Flower's final status); after a coordinator crash restart
    what died and resume, up to RESUME_ATTEMPTS times. Returns the last submission's status."""
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
            fed.restart_superlink()
        flower_run_id = fed.resume(app_dir=app_dir, run_dir=run_dir)
        console.print(f"[yellow]the coordinator crashed; run {run_dir.name} resumed as Flower run {flower_run_id}[/]")
    return status
