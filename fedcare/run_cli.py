"""`fedcare run resume RUN_DIR`: go on with a run whose SuperLink or ServerApp crashed (docs/resume.md).

It reads the run directory the ServerApp wrote (`run-config.json`, `checkpoint.json`), and submits the
same app with the same run config plus `fedcare-run-id`, so the new ServerApp picks up the checkpoint
and plays the rounds after the last one accounted for. Flower gives the submission a new run id; the
run keeps its first one (its directory, DP events and ledger rows), and results.json's `resumed` list
records each new one.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated

import typer

from fedcare.federation_dir import FederationDir, FederationDirError
from fedcare.flwr_cli import FlwrCli
from fedcare.processes import FederationError
from fedcare.registration_cli import FederationOption, SuperLinkOption, console, fail
from server.checkpoint import CheckpointError, ResumePlan, plan_resume

run_app = typer.Typer(help="A run of the federation: resume it after a crash.", no_args_is_help=True)
APP_DIR = Path(__file__).resolve().parents[1]  # the Flower app: server/, client/, common/ and pyproject.toml


def _submit_resume(cli: FlwrCli, *, run_dir: Path, app_dir: Path) -> tuple[ResumePlan, int]:
    """Submit the run in `run_dir` again, from its last checkpoint; returns the plan and the new Flower run id."""
    plan = plan_resume(run_dir)
    return plan, cli.submit(app_dir=app_dir, run_config=plan.run_config)


@run_app.command("resume")
def resume_command(
    run_dir: Annotated[Path, typer.Argument(help="The run's directory: RESULTS_DIR/<run id> (holds checkpoint.json).")],
    federation: FederationOption = Path("."),
    superlink: SuperLinkOption = None,
    app_dir: Annotated[Path, typer.Option("--app", help="The Flower app to submit (default: this fedcare).")] = APP_DIR,
    wait: Annotated[bool, typer.Option("--wait", help="Follow the run until it finishes.")] = False,
) -> None:
    """Continue a run from its last completed round, with the same run config, after a SuperLink or ServerApp
    crash. Restart the SuperLink (same --database) first; the hospitals' nodes reconnect by themselves."""
    try:
        fed = FederationDir(federation.resolve())
        cli = FlwrCli(fed.root)
        cli.write_config(superlink or fed.config().control_address, ca_certificate=fed.ca_certificate)
        plan, flower_run_id = _submit_resume(cli, run_dir=run_dir.resolve(), app_dir=app_dir)
    except (CheckpointError, FederationDirError) as exc:
        raise fail(f"cannot resume: {exc}", 2) from None
    except FederationError as exc:
        raise fail(f"cannot resume: the SuperLink did not take the run: {exc}") from None
    answer = {"run_id": plan.run_id, "from_round": plan.from_round, "num_rounds": plan.num_rounds}
    answer["flower_run_id"] = str(flower_run_id)
    if wait:
        answer["status"] = _follow(cli, flower_run_id)
        answer["results"] = json.loads((plan.run_dir / "results.json").read_text())
    console.print_json(json.dumps(answer))
    if wait and answer["status"] != "finished:completed":
        raise typer.Exit(1)


def _follow(cli: FlwrCli, flower_run_id: int, *, poll: float = 3.0) -> str:
    while True:
        status = str(cli.run_info(flower_run_id)["status"])
        if status.startswith("finished"):
            return status
        time.sleep(poll)
