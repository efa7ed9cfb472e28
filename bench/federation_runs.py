"""What the federation benchmarks share: snapshotting the apps, timing one `flwr run`, checking that a
fedcare run aggregated every hospital in every round, and finding processes left running.

Both apps are copied before the first run, so every run of one benchmark uses one version of the code
even while the tree is being edited.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import tomllib
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import psutil
from rich.console import Console

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run as `python bench/<name>.py` from a checkout

from fedcare.app_stage import stage_app  # noqa: E402
from fedcare.federation import FederationError, LocalFederation  # noqa: E402

REFERENCE_APP = REPO / "bench" / "reference_app"
SHARED_KEYS = ("local-epochs", "batch-size", "learning-rate", "validation-fraction", "seed")
SKIP_COPY = shutil.ignore_patterns("__pycache__", "*.pyc")
console = Console(stderr=True)


@dataclass(frozen=True)
class RunTiming:
    app: str
    rounds: int
    run_id: int
    status: str
    total_seconds: float  # `flwr run` called -> SuperLink's finished-at (1 s resolution)
    elapsed_seconds: float  # flwr ls `elapsed`: running-at -> finished-at
    observed_seconds: float  # `flwr run` called -> this script saw the run finished (poll granularity)
    clientapp_seconds: float  # flwr ls compute-time: SuperNode-reported message processing time, summed
    running_at: str
    finished_at: str
    load_before: tuple[float, float, float]  # os.getloadavg() when the run was submitted
    load_after: tuple[float, float, float]


def load_average() -> tuple[float, float, float]:
    one, five, fifteen = os.getloadavg()
    return round(one, 2), round(five, 2), round(fifteen, 2)


def fedcare_training_settings(app_dir: Path) -> dict[str, Any]:
    """fedcare's own local-training settings, so the reference trains exactly the same way."""
    config = tomllib.loads((app_dir / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    return {key: config[key] for key in SHARED_KEYS}


def snapshot_apps(dest: Path) -> dict[str, Path]:
    """Copy both Flower apps; the reference gets its own copy of `common` instead of the installed one."""
    shutil.rmtree(dest, ignore_errors=True)
    fedcare, reference = dest / "fedcare", dest / "reference"
    if stage_app(REPO, into=fedcare) != fedcare:  # what `flwr run` is given anyway (fedcare/app_stage.py)
        raise FederationError("pyproject.toml's fab-include names no top-level folders to snapshot")
    shutil.copytree(REFERENCE_APP, reference, ignore=SKIP_COPY)
    shutil.copytree(REPO / "common", reference / "common", ignore=SKIP_COPY)
    return {"fedcare": fedcare, "reference": reference}


def source_state() -> dict[str, Any]:
    """The commit the apps were copied from, and which app files differed from it."""

    def git(*args: str) -> str:
        done = subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True)
        return done.stdout.rstrip("\n") if done.returncode == 0 else ""  # porcelain lines start with a space

    changed = git("status", "--porcelain", "--", "pyproject.toml", "server", "client", "common", "bench/reference_app")
    return {"commit": git("rev-parse", "--short", "HEAD"), "uncommitted": [line[3:] for line in changed.splitlines()]}


def check_fedcare_run(results_path: Path, *, rounds: int, hospitals: int) -> dict[str, Any]:
    """fedcare's run ends `completed` even when rounds fail; refuse to time such a run."""
    results = json.loads(results_path.read_text())
    aggregated = [r for r in results["rounds"] if r["status"] == "aggregated" and len(r["participants"]) == hospitals]
    if results["status"] != "completed" or len(aggregated) != rounds:
        problems = [
            f"round {r['round']}: {r.get('reason', r['status'])}; rejected {[x['reason'] for x in r['rejected']]}"
            for r in results["rounds"]
            if r not in aggregated
        ]
        raise FederationError(
            f"fedcare run {results['run_id']} ({results['status']}) did not aggregate all {hospitals} "
            f"hospitals in every round: {problems[:3]}; see {results_path}"
        )
    return results


def _utc(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp.replace(" ", "T"))


def time_run(
    fed: LocalFederation,
    *,
    app: str,
    app_dir: Path,
    run_config: dict[str, Any],
    rounds: int,
    poll: float,
    timeout: float,
) -> RunTiming:
    console.log(f"{app}: submitting a {rounds}-round run")
    load_before = load_average()
    started = time.time()
    run_id = fed.submit(app_dir=app_dir, run_config=run_config)
    last_status = ""
    watch = fed.watch(run_id, fallback=poll)  # `flwr ls` costs a second of CPU the runs would otherwise get
    try:
        while True:
            run = watch.check()
            status = str(run.get("status", ""))  # the watch has no answer yet before the run's first end
            if status != last_status:
                last_status = status
                console.log(f"{app}: run {run_id} {last_status} after {time.time() - started:.1f} s")
            if last_status.startswith("finished"):
                break
            if time.time() - started > timeout:
                raise FederationError(
                    f"{app}: run {run_id} did not finish within {timeout:.0f} s (status {last_status})"
                )
            time.sleep(0.25)
    except BaseException:
        fed.stop_run(run_id)
        raise
    observed = time.time() - started
    if last_status != "finished:completed":
        raise FederationError(
            f"{app}: run {run_id} ended {last_status}: {run.get('status-details')}; logs in {fed.workdir / 'logs'}"
        )
    return RunTiming(
        app=app,
        rounds=rounds,
        run_id=run_id,
        status=last_status,
        total_seconds=round(_utc(run["finished-at"]).timestamp() - started, 1),
        elapsed_seconds=round(float(run["elapsed"]), 2),
        observed_seconds=round(observed, 1),
        clientapp_seconds=round(float(run["compute-time"]["clientapp-seconds"]), 2),
        running_at=run["running-at"],
        finished_at=run["finished-at"],
        load_before=load_before,
        load_after=load_average(),
    )


def leftover_processes(pids: set[int]) -> list[int]:
    alive = []
    for pid in sorted(pids):
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                alive.append(pid)
        except psutil.NoSuchProcess:
            pass
    return alive
