"""The demo's supervisor (fedcare/coordinator_recovery.py): which endings it resumes, and what it restarts first.

A real LocalFederation whose "superlink" is a real process we can kill; restarting a SuperLink and
resubmitting a run are recorded instead of done (tests/integration/test_resume.py does them for real).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from rich.console import Console

import fedcare.coordinator_recovery as recovery
from fedcare.coordinator_recovery import follow_resuming
from fedcare.federation import FederationError, LocalFederation


@pytest.fixture
def fed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    federation = LocalFederation(tmp_path / "fed")
    federation.spawn("superlink", [sys.executable, "-c", "import time; time.sleep(60)"], env={})
    calls: list[str] = []
    monkeypatch.setattr(recovery, "restart_superlink", lambda fed: calls.append("restart"))

    def resume_run(fed: LocalFederation, *, app_dir: Path, run_dir: Path) -> int:
        calls.append("resume")
        return 900 + len(calls)

    monkeypatch.setattr(recovery, "resume_run", resume_run)
    federation.calls = calls  # type: ignore[attr-defined]
    yield federation
    federation.stop(grace=2)


def _results(run_dir: Path, status: str) -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "results.json").write_text(json.dumps({"status": status}))
    return run_dir


def _follow(*endings: object):
    followed: list[int] = []

    def follow(*, run_id: int) -> str:
        followed.append(run_id)
        ending = endings[len(followed) - 1]
        if isinstance(ending, Exception):
            raise ending
        return str(ending)

    follow.followed = followed  # type: ignore[attr-defined]
    return follow


def test_a_killed_serverapp_is_resumed_and_the_resumed_run_followed(fed: LocalFederation, tmp_path: Path) -> None:
    run_dir = _results(tmp_path / "runs" / "7", "running")  # Flower ended the run; the ServerApp recorded nothing
    follow = _follow("finished:failed", "finished:completed")
    status = follow_resuming(fed, follow, run_dir=run_dir, app_dir=tmp_path, flower_run_id=7, console=Console())
    assert status == "finished:completed"
    assert fed.calls == ["resume"] and follow.followed == [7, 901]  # type: ignore[attr-defined]


def test_a_run_that_failed_of_its_own_is_not_resumed(fed: LocalFederation, tmp_path: Path) -> None:
    run_dir = _results(tmp_path / "runs" / "7", "failed")
    status = follow_resuming(
        fed, _follow("finished:failed"), run_dir=run_dir, app_dir=tmp_path, flower_run_id=7, console=Console()
    )
    assert status == "finished:failed" and fed.calls == []  # type: ignore[attr-defined]


def test_a_dead_superlink_is_restarted_before_the_run_is_resumed(fed: LocalFederation, tmp_path: Path) -> None:
    run_dir = _results(tmp_path / "runs" / "7", "running")
    fed.kill(fed.processes[0])
    follow = _follow(FederationError("`flwr ls` gave no JSON"), "finished:completed")
    status = follow_resuming(fed, follow, run_dir=run_dir, app_dir=tmp_path, flower_run_id=7, console=Console())
    assert status == "finished:completed" and fed.calls == ["restart", "resume"]  # type: ignore[attr-defined]


def test_an_unreachable_superlink_that_is_alive_is_an_error(fed: LocalFederation, tmp_path: Path) -> None:
    run_dir = _results(tmp_path / "runs" / "7", "running")
    with pytest.raises(FederationError):
        follow_resuming(
            fed,
            _follow(FederationError("timeout")),
            run_dir=run_dir,
            app_dir=tmp_path,
            flower_run_id=7,
            console=Console(),
        )
