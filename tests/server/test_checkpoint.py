"""The round checkpoint on disk: what it keeps, that a crash while writing leaves the last one whole, and
the resume decision (`plan_resume`) that `fedcare run resume` makes from a run directory."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import server.checkpoint as checkpoint_module
from common.atomic import write_json_atomic
from server.checkpoint import (
    CHECKPOINT_FILE,
    RUN_CONFIG_FILE,
    Checkpoint,
    CheckpointError,
    plan_resume,
    read_checkpoint,
    write_checkpoint,
)


def _checkpoint(completed_round: int, *, model: bytes = b"weights") -> Checkpoint:
    return Checkpoint(
        run_id="18446744073709551615",  # Flower run ids are unsigned 64-bit: kept as text
        completed_round=completed_round,
        scored_round=completed_round,
        model_path=f"/runs/1/models/round-{completed_round}.pt",
        rounds={"weights": model, "suspects": {"7": "no reply"}, "metrics_sum": None},
        results={"status": "running", "num_rounds": 4, "rounds": [{"round": r} for r in range(1, completed_round + 1)]},
        outbox=[{"institution": "hospital-1", "run_id": "1", "server_round": completed_round}],
        gate={"7": "hospital-1"},
    )


def test_a_checkpoint_keeps_bytes_json_results_and_the_outbox_and_drops_older_files(tmp_path: Path) -> None:
    write_checkpoint(tmp_path, _checkpoint(1, model=b"one"))
    write_checkpoint(tmp_path, _checkpoint(2, model=b"\x00two\xff"))
    back = read_checkpoint(tmp_path)
    assert back is not None
    assert back.run_id == "18446744073709551615" and back.completed_round == 2 and back.scored_round == 2
    assert back.rounds == {"weights": b"\x00two\xff", "suspects": {"7": "no reply"}, "metrics_sum": None}
    assert back.results["rounds"] == [{"round": 1}, {"round": 2}]
    assert back.outbox == [{"institution": "hospital-1", "run_id": "1", "server_round": 2}]
    assert back.gate == {"7": "hospital-1"} and back.written_at
    assert sorted(p.name for p in (tmp_path / "checkpoint").iterdir()) == ["round-2-weights.bin"]  # neither npz nor HE
    assert read_checkpoint(tmp_path / "elsewhere") is None


def test_a_crash_while_writing_leaves_the_previous_checkpoint_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_checkpoint(tmp_path, _checkpoint(1, model=b"round one"))

    def crash(path: Path, payload: object) -> None:
        raise OSError("power cut")  # after the round's files, before checkpoint.json is renamed into place

    monkeypatch.setattr(checkpoint_module, "write_json_atomic", crash)
    with pytest.raises(OSError, match="power cut"):
        write_checkpoint(tmp_path, _checkpoint(2, model=b"round two"))
    monkeypatch.undo()
    back = read_checkpoint(tmp_path)
    assert back is not None and back.completed_round == 1 and back.rounds["weights"] == b"round one"


def test_an_unusable_checkpoint_is_refused_with_what_is_wrong(tmp_path: Path) -> None:
    write_checkpoint(tmp_path, _checkpoint(1))
    (tmp_path / "checkpoint" / "round-1-weights.bin").write_bytes(b"short")  # a torn or foreign file
    with pytest.raises(CheckpointError, match="holds 5 bytes"):
        read_checkpoint(tmp_path)
    (tmp_path / "checkpoint" / "round-1-weights.bin").unlink()
    with pytest.raises(CheckpointError, match="is missing"):
        read_checkpoint(tmp_path)
    (tmp_path / CHECKPOINT_FILE).write_text('{"format": "something else"}')
    with pytest.raises(CheckpointError, match="not a fedcare checkpoint"):
        read_checkpoint(tmp_path)
    (tmp_path / CHECKPOINT_FILE).write_text("{torn")
    with pytest.raises(CheckpointError, match="unreadable"):
        read_checkpoint(tmp_path)


def test_resume_goes_on_after_the_last_round_accounted_for_with_the_same_run_config(tmp_path: Path) -> None:
    config = {"num-rounds": 4, "schema-path": "/data/schema.json", "privacy-mode": "plain"}
    write_json_atomic(tmp_path / RUN_CONFIG_FILE, config)
    write_checkpoint(tmp_path, _checkpoint(2))
    plan = plan_resume(tmp_path)
    assert plan.from_round == 3 and plan.num_rounds == 4 and plan.run_id == "18446744073709551615"
    assert plan.run_config == {**config, "fedcare-run-id": "18446744073709551615"}

    write_checkpoint(tmp_path, _checkpoint(4))  # crashed during the final scoring: it is played again
    assert plan_resume(tmp_path).from_round == 5


def test_resume_refuses_a_completed_run_and_a_directory_without_a_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no run-config.json"):
        plan_resume(tmp_path)
    write_json_atomic(tmp_path / RUN_CONFIG_FILE, {"num-rounds": 4})
    with pytest.raises(CheckpointError, match="no checkpoint.json"):
        plan_resume(tmp_path)
    write_checkpoint(tmp_path, _checkpoint(4))
    (tmp_path / "results.json").write_text(json.dumps({"status": "completed"}))
    with pytest.raises(CheckpointError, match="completed already"):
        plan_resume(tmp_path)
    (tmp_path / "results.json").write_text(json.dumps({"status": "failed"}))  # a crash recorded as a failure
    assert plan_resume(tmp_path).from_round == 5
