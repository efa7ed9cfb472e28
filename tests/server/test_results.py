"""results.json: the fields a run promises, written after every step."""

from __future__ import annotations

import json
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from common.site_metrics import FederationFigures
from server.fedavg import ClientUpdate
from server.replies import Rejection, SortedReplies
from server.results import RunResults


def _strict_json(path: Path) -> dict[str, Any]:
    """Parse as standard JSON: NaN or Infinity in the file is an error."""

    def refuse(token: str) -> None:
        raise ValueError(f"non-standard JSON constant {token} in {path}")

    return json.loads(path.read_text(), parse_constant=refuse)


@pytest.fixture
def results(tmp_path: Path) -> RunResults:
    return RunResults(
        path=tmp_path / "7" / "results.json",
        run_id=7,
        privacy_mode="plain",
        model="mlp",
        parameter_count=2499,
        num_rounds=2,
    )


def _update(institution: str, n: int) -> ClientUpdate:
    return ClientUpdate(institution, hash(institution) % 100, OrderedDict(w=np.zeros(1, np.float32)), n)


def _train_round() -> SortedReplies:
    return SortedReplies(
        updates=[_update("Riverside", 30), _update("General", 10)],
        participants=["Riverside", "General"],
        scores=[("Riverside", 0.6, 0.7, 30), ("General", 0.2, 0.9, 10), ("St Mary", 1.0, 0.5, 20)],
        train_losses=[(0.5, 30), (0.1, 10)],
        rejections=[Rejection("St Mary", 3, "invalid-update", "tensor 'w' contains NaN or infinite values")],
    )


def test_a_fresh_run_is_saved_as_running(results: RunResults) -> None:
    results.save()
    saved = _strict_json(results.path)
    assert saved["status"] == "running" and saved["rounds"] == [] and saved["finished_at"] is None
    assert saved["run_id"] == 7 and saved["privacy_mode"] == "plain" and saved["parameter_count"] == 2499
    assert saved["dp"] == {"enabled": False}
    assert "path" not in saved


def test_the_initial_model_scores_go_to_initial(results: RunResults) -> None:
    results.record_scores(after_round=0, replies=SortedReplies(scores=[("A", 2.0, 0.25, 10), ("B", 1.0, 0.5, 30)]))
    results.save()
    initial = _strict_json(results.path)["initial"]
    assert initial["loss"] == pytest.approx(1.25) and initial["accuracy"] == pytest.approx(0.4375)
    assert initial["per_institution"]["B"] == {"loss": 1.0, "accuracy": 0.5, "examples": 30}


def test_an_aggregated_round_records_participants_rejections_and_privacy(results: RunResults, tmp_path: Path) -> None:
    results.record_round(server_round=1, replies=_train_round(), model_path=tmp_path / "round-1.pt")
    results.save()
    [entry] = _strict_json(results.path)["rounds"]
    assert entry["round"] == 1 and entry["status"] == "aggregated"
    assert entry["participants"] == ["General", "Riverside"]
    assert entry["epsilon"] == {"General": None, "Riverside": None}  # DP is off in plain mode
    assert entry["train_loss"] == pytest.approx((0.5 * 30 + 0.1 * 10) / 40)
    assert entry["loss"] is None and entry["accuracy"] is None  # scored with the next message
    assert entry["rejected"] == [
        {
            "institution": "St Mary",
            "node_id": 3,
            "code": "invalid-update",
            "reason": "tensor 'w' contains NaN or infinite values",
        }
    ]
    assert entry["model_path"] == str(tmp_path / "round-1.pt")


def test_scores_arrive_for_the_round_that_produced_the_model(results: RunResults, tmp_path: Path) -> None:
    results.record_round(server_round=1, replies=_train_round(), model_path=tmp_path / "round-1.pt")
    scores = SortedReplies(scores=[("Riverside", 0.6, 0.7, 30), ("General", 0.2, 0.9, 10)])
    results.record_scores(after_round=1, replies=scores)
    results.save()
    [entry] = _strict_json(results.path)["rounds"]
    assert entry["loss"] == pytest.approx((0.6 * 30 + 0.2 * 10) / 40)
    assert entry["accuracy"] == pytest.approx((0.7 * 30 + 0.9 * 10) / 40)
    assert entry["per_institution"] == {
        "Riverside": {"loss": 0.6, "accuracy": 0.7, "examples": 30},
        "General": {"loss": 0.2, "accuracy": 0.9, "examples": 10},
    }


def test_a_failed_round_says_why_and_has_no_participants(results: RunResults) -> None:
    replies = SortedReplies(rejections=[Rejection("node-4", 4, "node-error", "timeout")])
    results.record_failed_round(server_round=2, reason="no valid update from any hospital", replies=replies)
    results.save()
    [entry] = _strict_json(results.path)["rounds"]
    assert entry["status"] == "failed" and entry["reason"] == "no valid update from any hospital"
    assert entry["participants"] == [] and entry["epsilon"] == {}
    assert entry["loss"] is None and entry["accuracy"] is None
    assert entry["rejected"][0]["code"] == "node-error"


def test_a_completed_run_names_its_final_model(results: RunResults, tmp_path: Path) -> None:
    results.record_round(server_round=1, replies=_train_round(), model_path=tmp_path / "round-1.pt")
    results.record_failed_round(server_round=2, reason="no valid update from any hospital", replies=SortedReplies())
    results.finish(status="completed", final_model_path=tmp_path / "final_model.pt")
    saved = _strict_json(results.path)
    assert saved["status"] == "completed" and saved["error"] is None
    assert saved["final_model_path"] == str(tmp_path / "final_model.pt")
    assert saved["finished_at"] is not None and saved["started_at"] <= saved["finished_at"]
    assert [r["status"] for r in saved["rounds"]] == ["aggregated", "failed"]
    for key in ("privacy_mode", "parameter_count", "model", "num_rounds", "initial"):
        assert key in saved


def test_a_crashed_run_records_the_error(results: RunResults) -> None:
    results.finish(status="failed", final_model_path=None, error="TimeoutError: only 1 of the required 2 hospitals")
    saved = _strict_json(results.path)
    assert saved["status"] == "failed" and saved["final_model_path"] is None
    assert saved["error"].startswith("TimeoutError")


def test_epsilon_is_reported_per_institution_once_dp_reports_it(results: RunResults, tmp_path: Path) -> None:
    replies = _train_round()
    replies.epsilon_known.update({"Riverside": 1.5, "St Mary": 2.0})  # St Mary refused but had spent budget
    results.record_round(server_round=1, replies=replies, model_path=tmp_path / "round-1.pt")
    results.save()
    [entry] = _strict_json(results.path)["rounds"]
    assert entry["epsilon"] == {"General": None, "Riverside": 1.5, "St Mary": 2.0}


def test_federation_figures_land_on_the_model_they_scored_and_the_round_that_trained(
    results: RunResults, tmp_path: Path
) -> None:
    """As in HE aggregate mode: round m's summed metrics are decrypted with message m+1 (or the final query)."""
    results.metrics = "aggregate"
    aggregate_only = SortedReplies(participants=["Riverside", "General"])
    results.record_scores(after_round=0, replies=aggregate_only)
    results.record_round(server_round=1, replies=aggregate_only, model_path=tmp_path / "round-1.he")
    round_2 = SortedReplies(
        participants=["Riverside", "General"],
        federation=[FederationFigures(server_round=1, loss=0.7, accuracy=0.5, train_loss=0.6)],
    )
    results.record_scores(after_round=1, replies=round_2)
    results.record_round(server_round=2, replies=round_2, model_path=tmp_path / "round-2.he")
    final = SortedReplies(
        federation=[
            FederationFigures(server_round=2, loss=0.4, accuracy=0.8, train_loss=0.3),
            FederationFigures(server_round=3, loss=0.2, accuracy=0.9),
        ]
    )
    results.record_scores(after_round=2, replies=final)
    results.save()
    saved = _strict_json(results.path)
    assert saved["metrics"] == "aggregate"
    assert saved["initial"] == {"loss": 0.7, "accuracy": 0.5, "per_institution": {}}
    first, second = saved["rounds"]
    assert (first["train_loss"], first["loss"], first["accuracy"]) == (0.6, 0.4, 0.8)
    assert (second["train_loss"], second["loss"], second["accuracy"]) == (0.3, 0.2, 0.9)
    assert first["per_institution"] == second["per_institution"] == {}


def test_federation_figures_known_in_the_round_itself_are_recorded_with_it(results: RunResults, tmp_path: Path) -> None:
    """As in SecAgg+ aggregate mode: the unmasked sum gives the round's figures at once."""
    replies = SortedReplies(
        participants=["A", "B"], federation=[FederationFigures(server_round=1, loss=0.7, accuracy=0.5, train_loss=0.6)]
    )
    results.record_scores(after_round=0, replies=replies)
    results.record_round(server_round=1, replies=replies, model_path=tmp_path / "round-1.pt")
    assert results.initial == {"loss": 0.7, "accuracy": 0.5, "per_institution": {}}
    assert results.rounds[0]["train_loss"] == 0.6


def test_each_round_records_the_bytes_both_ways_aggregated_or_failed(results: RunResults, tmp_path: Path) -> None:
    replies = SortedReplies(participants=["A", "B"], bytes_up={"B": 1200, "A": 1100}, bytes_down=5000)
    results.record_round(server_round=1, replies=replies, model_path=tmp_path / "m.pt")
    results.record_failed_round(server_round=2, reason="no valid update", replies=SortedReplies(bytes_up={"A": 90}))
    results.save()
    first, second = _strict_json(results.path)["rounds"]
    assert (first["bytes_up"], first["bytes_down"]) == ({"A": 1100, "B": 1200}, 5000)
    assert (second["bytes_up"], second["bytes_down"]) == ({"A": 90}, None)  # nothing sent: none counted
