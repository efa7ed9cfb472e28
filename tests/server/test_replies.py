"""Sorting real Flower reply messages into updates, scores and rejections."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest
from flwr.app import ConfigRecord, Error, Message, MessageType, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from common.codecs import from_numpy
from common.dp_event import EARLIER_RECORD, DPEvent, earlier_events_record
from common.site_metrics import FEDERATION_RECORD
from server.replies import Rejection, sort_replies


@pytest.fixture(autouse=True)
def serverapp_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    """Flower stamps instructions with the running task's identity; the SuperLink runtime sets it."""
    monkeypatch.setattr(TaskIdentity, "_task_id", 1)
    monkeypatch.setattr(TaskIdentity, "_run_id", 99)
    monkeypatch.setattr(TaskIdentity, "_node_id", 0)


@pytest.fixture
def reference() -> OrderedDict[str, np.ndarray]:
    return OrderedDict(w=np.zeros((2, 3), dtype=np.float32), b=np.zeros(3, dtype=np.float32))


def _reply(node_id: int, content: RecordDict | Error, *, message_type: str = MessageType.TRAIN) -> Message:
    """A reply as a SuperNode sends it: `reply_to` the instruction, so its src is the hospital's node."""
    instruction = Message(RecordDict(), dst_node_id=node_id, message_type=message_type, group_id="1")
    reply = Message(content, reply_to=instruction)
    assert reply.metadata.src_node_id == node_id
    return reply


def _weights(value: float = 1.0) -> OrderedDict[str, np.ndarray]:
    return OrderedDict(w=np.full((2, 3), value, np.float32), b=np.full(3, value, np.float32))


def _train_reply(
    node_id: int,
    institution: str,
    weights: dict[str, np.ndarray] | None,
    *,
    n: int = 10,
    train_loss: float = 0.5,
    eval_loss: float = 0.7,
    eval_accuracy: float = 0.6,
    eval_examples: int = 4,
) -> Message:
    content = RecordDict(
        {
            "metrics": MetricRecord(
                {
                    "num-examples": n,
                    "train-loss": train_loss,
                    "eval-loss": eval_loss,
                    "eval-accuracy": eval_accuracy,
                    "eval-examples": eval_examples,
                }
            ),
            "status": ConfigRecord({"ok": True, "institution": institution}),
        }
    )
    if weights is not None:
        content["arrays"] = from_numpy(weights)
    return _reply(node_id, content)


def test_a_good_update_is_accepted(reference: OrderedDict[str, np.ndarray]) -> None:
    out = sort_replies([_train_reply(5, "St Mary", _weights(2.0), n=12)], reference=reference, expect_update=True)
    assert out.rejections == []
    [update] = out.updates
    assert (update.institution, update.node_id, update.num_examples) == ("St Mary", 5, 12)
    assert list(update.weights) == ["w", "b"]
    np.testing.assert_array_equal(update.weights["w"], np.full((2, 3), 2.0, np.float32))
    assert out.train_losses == [(0.5, 12)]
    assert out.scores == [("St Mary", pytest.approx(0.7), pytest.approx(0.6), 4)]


def test_a_nan_update_is_rejected_with_the_tensor_named(reference: OrderedDict[str, np.ndarray]) -> None:
    weights = _weights()
    weights["b"][1] = np.nan
    out = sort_replies([_train_reply(6, "General", weights)], reference=reference, expect_update=True)
    assert out.updates == [] and out.train_losses == []
    [rejection] = out.rejections
    assert (rejection.institution, rejection.node_id, rejection.code) == ("General", 6, "invalid-update")
    assert "'b'" in rejection.reason and "NaN" in rejection.reason


def test_a_wrongly_shaped_update_is_rejected(reference: OrderedDict[str, np.ndarray]) -> None:
    weights = OrderedDict(w=np.ones((3, 2), np.float32), b=np.ones(3, np.float32))
    out = sort_replies([_train_reply(6, "General", weights)], reference=reference, expect_update=True)
    assert out.updates == []
    [rejection] = out.rejections
    assert rejection.code == "invalid-update"
    assert "tensor 'w' has shape (3, 2), expected (2, 3)" in rejection.reason


def test_a_train_reply_without_weights_is_rejected(reference: OrderedDict[str, np.ndarray]) -> None:
    out = sort_replies([_train_reply(6, "General", None)], reference=reference, expect_update=True)
    assert [(r.code, r.reason) for r in out.rejections] == [("invalid-update", "reply has no model weights")]


def test_a_non_positive_example_count_is_rejected(reference: OrderedDict[str, np.ndarray]) -> None:
    out = sort_replies([_train_reply(6, "General", _weights(), n=0)], reference=reference, expect_update=True)
    assert out.updates == []
    assert "num-examples is 0" in out.rejections[0].reason


def test_a_non_finite_train_loss_keeps_the_update_but_not_the_loss(reference: OrderedDict[str, np.ndarray]) -> None:
    out = sort_replies(
        [_train_reply(6, "General", _weights(), train_loss=float("nan"))], reference=reference, expect_update=True
    )
    assert len(out.updates) == 1 and out.train_losses == [] and out.rejections == []


def test_a_refusal_is_recorded_with_its_code(reference: OrderedDict[str, np.ndarray]) -> None:
    status = {
        "ok": False,
        "code": "bad-local-data",
        "reason": "row 3, column 'age' is empty",
        "institution": "Riverside",
    }
    out = sort_replies(
        [_reply(8, RecordDict({"status": ConfigRecord(status)}))], reference=reference, expect_update=True
    )
    assert out.updates == [] and out.scores == []
    assert out.rejections == [Rejection("Riverside", 8, "bad-local-data", "row 3, column 'age' is empty")]


def test_a_reply_without_status_is_rejected(reference: OrderedDict[str, np.ndarray]) -> None:
    out = sort_replies([_reply(8, RecordDict({}))], reference=reference, expect_update=True)
    assert out.rejections == [Rejection("node-8", 8, "no-status", "reply carries no status record")]


def test_an_error_message_is_recorded_as_a_node_error(reference: OrderedDict[str, np.ndarray]) -> None:
    replies = [_reply(9, Error(code=2, reason="ClientApp crashed: MemoryError")), _reply(10, Error(code=3))]
    out = sort_replies(replies, reference=reference, expect_update=True)
    assert out.rejections == [
        Rejection("node-9", 9, "node-error", "ClientApp crashed: MemoryError"),
        Rejection("node-10", 10, "node-error", "error code 3"),
    ]


def test_one_bad_hospital_does_not_stop_the_others(reference: OrderedDict[str, np.ndarray]) -> None:
    bad = _weights()
    bad["w"][0, 0] = np.inf
    replies = [
        _train_reply(5, "A", _weights(1.0), n=10),
        _train_reply(6, "B", bad),
        _reply(7, Error(code=1, reason="timeout")),
        _train_reply(8, "D", _weights(3.0), n=30),
    ]
    out = sort_replies(replies, reference=reference, expect_update=True)
    assert [u.institution for u in out.updates] == ["A", "D"]
    assert [(r.institution, r.code) for r in out.rejections] == [("B", "invalid-update"), ("node-7", "node-error")]


def _eval_reply(node_id: int, institution: str, *, loss: float, accuracy: float, examples: int) -> Message:
    content = RecordDict(
        {
            "metrics": MetricRecord({"eval-loss": loss, "eval-accuracy": accuracy, "eval-examples": examples}),
            "status": ConfigRecord({"ok": True, "institution": institution}),
        }
    )
    return _reply(node_id, content, message_type=MessageType.EVALUATE)


def test_evaluate_replies_collect_scores_without_updates() -> None:
    replies = [
        _eval_reply(5, "A", loss=0.4, accuracy=0.9, examples=20),
        _eval_reply(6, "B", loss=0.8, accuracy=0.5, examples=10),
        _eval_reply(7, "C", loss=0.1, accuracy=1.0, examples=0),  # nothing scored: left out
    ]
    out = sort_replies(replies, reference=None, expect_update=False)
    assert out.scores == [
        ("A", pytest.approx(0.4), pytest.approx(0.9), 20),
        ("B", pytest.approx(0.8), pytest.approx(0.5), 10),
    ]
    assert out.updates == [] and out.rejections == [] and out.train_losses == []


def test_non_finite_scores_are_not_averaged_into_the_round() -> None:
    """A faulty hospital's NaN loss would make the round's loss NaN and results.json non-standard JSON."""
    replies = [
        _eval_reply(5, "A", loss=0.4, accuracy=0.9, examples=20),
        _eval_reply(6, "B", loss=float("nan"), accuracy=0.5, examples=10),
    ]
    out = sort_replies(replies, reference=None, expect_update=False)
    assert all(np.isfinite(loss) and np.isfinite(acc) for _, loss, acc, _ in out.scores), out.scores


def _dp_event(epsilon: float) -> ConfigRecord:
    return ConfigRecord(
        {
            "noise_multiplier": 1.1,
            "sample_rate": 0.1,
            "steps": 20,
            "accountant": "rdp",
            "epsilon": epsilon,
            "delta": 1e-5,
            "run_id": "99",
            "server_round": 1,
        }
    )


def test_a_dp_event_records_the_institutions_epsilon(reference: OrderedDict[str, np.ndarray]) -> None:
    reply = _train_reply(5, "St Mary", _weights())
    reply.content["dp-event"] = _dp_event(1.25)
    out = sort_replies([reply], reference=reference, expect_update=True)
    assert len(out.updates) == 1 and out.rejections == []
    assert out.epsilon_known == {"St Mary": 1.25}
    assert out.dp_events["St Mary"].accountant == "rdp"


def test_an_update_rejected_for_its_dp_event_leaves_no_trace_in_the_round(
    reference: OrderedDict[str, np.ndarray],
) -> None:
    reply = _train_reply(5, "St Mary", _weights(), train_loss=0.5)
    reply.content["dp-event"] = _dp_event(-1.0)
    out = sort_replies([reply], reference=reference, expect_update=True)
    assert [r.code for r in out.rejections] == ["invalid-update"]
    assert "epsilon -1.0" in out.rejections[0].reason
    assert out.updates == [] and out.epsilon_known == {}
    assert out.train_losses == [], "the rejected update's loss is still averaged into the round's train_loss"


def test_a_refusal_reporting_its_spent_epsilon_is_kept(reference: OrderedDict[str, np.ndarray]) -> None:
    status = {"ok": False, "code": "budget-exhausted", "reason": "above the limit", "institution": "A", "epsilon": 7.5}
    out = sort_replies(
        [_reply(8, RecordDict({"status": ConfigRecord(status)}))], reference=reference, expect_update=True
    )
    assert out.epsilon_known == {"A": 7.5}
    assert [r.code for r in out.rejections] == ["budget-exhausted"]


@pytest.mark.parametrize("epsilon", ["lots", float("nan")])
def test_a_refusal_with_a_malformed_epsilon_is_rejected_not_fatal(
    reference: OrderedDict[str, np.ndarray], epsilon: object
) -> None:
    """A faulty hospital must not crash the round (str) or put NaN into results.json (nan)."""
    status = {"ok": False, "code": "budget-exhausted", "reason": "", "institution": "A", "epsilon": epsilon}
    replies = [_reply(8, RecordDict({"status": ConfigRecord(status)})), _train_reply(5, "B", _weights())]
    out = sort_replies(replies, reference=reference, expect_update=True)
    assert [u.institution for u in out.updates] == ["B"]
    assert all(np.isfinite(e) for e in out.epsilon_known.values()), out.epsilon_known


def test_a_rejected_update_still_reports_its_dp_spending(reference: OrderedDict[str, np.ndarray]) -> None:
    """The hospital trained (and spent budget) even though its update is unusable: the ledger must know."""
    weights = _weights()
    weights["w"][0, 0] = np.nan
    reply = _train_reply(5, "St Mary", weights)
    reply.content["dp-event"] = _dp_event(1.5)
    out = sort_replies([reply], reference=reference, expect_update=True)
    assert [r.code for r in out.rejections] == ["invalid-update"] and out.updates == [] and out.participants == []
    assert out.dp_events["St Mary"].epsilon == 1.5 and out.epsilon_known == {"St Mary": 1.5}


def test_a_refusal_after_training_carries_its_dp_event(reference: OrderedDict[str, np.ndarray]) -> None:
    status = {"ok": False, "code": "cannot-encrypt", "reason": "update contains NaN", "institution": "A"}
    reply = _reply(8, RecordDict({"status": ConfigRecord(status), "dp-event": _dp_event(0.75)}))
    out = sort_replies([reply], reference=reference, expect_update=True)
    assert [r.code for r in out.rejections] == ["cannot-encrypt"]
    assert out.dp_events["A"].epsilon == 0.75 and out.epsilon_known == {"A": 0.75}


def test_in_aggregate_mode_no_score_is_read_and_the_hospitals_figures_are_agreed_by_median(
    reference: OrderedDict[str, np.ndarray], caplog: pytest.LogCaptureFixture
) -> None:
    replies = []
    for node, accuracy in ((1, 0.9), (2, 0.9), (3, 0.1)):  # hospital 3 misreports the decrypted figures
        reply = _train_reply(node, f"h{node}", _weights())
        reply.content[FEDERATION_RECORD] = ConfigRecord({"round": 1, "loss": 0.3, "accuracy": accuracy})
        replies.append(reply)
    out = sort_replies(replies, reference=reference, expect_update=True, per_site=False)
    assert out.scores == [] and out.train_losses == []
    assert sorted(out.participants) == ["h1", "h2", "h3"]
    (figures,) = out.federation
    assert (figures.server_round, figures.loss, figures.accuracy, figures.train_loss) == (1, 0.3, 0.9, None)
    assert "different federation accuracy for round 1" in caplog.text


def _work(local_steps: int) -> ConfigRecord:
    return ConfigRecord(
        {
            "local_steps": local_steps,
            "full_steps": 40,
            "train_seconds": 2.0,
            "step_seconds": 0.1,
            "round_seconds": 3.0,
            "device": "cpu (2 cores)",
            "memory_bytes": 1 << 30,
            "examples_per_second": 160.0,
        }
    )


def test_a_work_report_gives_the_update_its_steps_and_may_not_claim_more_than_the_dp_event(
    reference: OrderedDict[str, np.ndarray],
) -> None:
    good = _train_reply(5, "St Mary", _weights())
    good.content["dp-event"], good.content["work"] = _dp_event(1.0), _work(12)
    greedy = _train_reply(6, "St Jude", _weights())
    greedy.content["dp-event"], greedy.content["work"] = _dp_event(1.0), _work(21)  # the event records 20
    out = sort_replies([good, greedy], reference=reference, expect_update=True)
    assert [(u.institution, u.local_steps) for u in out.updates] == [("St Mary", 12)]
    assert out.work[5].local_steps == 12 and 6 not in out.work
    assert [(r.institution, r.code) for r in out.rejections] == [("St Jude", "invalid-update")]
    assert "21 local steps" in out.rejections[0].reason and "records 20" in out.rejections[0].reason
    assert out.dp_events["St Jude"].steps == 20  # its spending still reaches the ledger


def test_fednova_rounds_reject_an_update_without_its_steps(reference: OrderedDict[str, np.ndarray]) -> None:
    out = sort_replies([_train_reply(5, "Old Site", _weights())], reference=reference, expect_update=True)
    out.drop_updates_without_steps()
    assert out.updates == [] and out.participants == []
    assert [(r.institution, r.code) for r in out.rejections] == [("Old Site", "no-work-report")]


def _event(server_round: int, *, run_id: str = "77") -> DPEvent:
    return DPEvent(
        noise_multiplier=1.1,
        sample_rate=0.1,
        steps=20,
        accountant="rdp",
        epsilon=0.5 * server_round,
        delta=1e-5,
        run_id=run_id,
        server_round=server_round,
    )


def test_earlier_events_a_reply_resends_go_to_the_ledger_and_a_bad_resend_costs_nothing(
    reference: OrderedDict[str, np.ndarray],
) -> None:
    """A ClientApp killed after committing round 2's spending never reported it; round 3's reply resends it."""
    good = _train_reply(5, "St Mary", _weights())
    good.content["dp-event"] = ConfigRecord(_event(3).as_record())
    good.content[EARLIER_RECORD] = ConfigRecord(earlier_events_record([_event(1), _event(2)]))
    bad = _train_reply(6, "St Anne", _weights())
    bad.content["dp-event"] = ConfigRecord(_event(3).as_record())
    bad.content[EARLIER_RECORD] = ConfigRecord(earlier_events_record([_event(3), _event(1, run_id="other")]))

    out = sort_replies([good, bad], reference=reference, expect_update=True)

    assert out.participants == ["St Mary", "St Anne"] and out.rejections == []
    assert [e.server_round for e in out.earlier_events["St Mary"]] == [1, 2]
    assert "St Anne" not in out.earlier_events  # not earlier rounds of this run: nothing forwarded
    assert out.dp_events["St Anne"].server_round == 3


def test_the_final_scorings_resent_events_go_to_the_ledger_only_when_asked_for_and_only_earlier_rounds() -> None:
    """No train reply follows the last round: a ClientApp killed there after committing reports it with its score."""
    good = _eval_reply(5, "St Mary", loss=0.4, accuracy=0.9, examples=20)
    good.content[EARLIER_RECORD] = ConfigRecord(earlier_events_record([_event(1), _event(2), _event(3)]))
    late = _eval_reply(6, "St Anne", loss=0.4, accuracy=0.9, examples=20)
    late.content[EARLIER_RECORD] = ConfigRecord(earlier_events_record([_event(4)]))  # not before the scoring round

    out = sort_replies([good, late], reference=None, expect_update=False, resent_of=("77", 4))
    assert [e.server_round for e in out.earlier_events["St Mary"]] == [1, 2, 3]
    assert "St Anne" not in out.earlier_events and out.dp_events == {}
    assert [s[0] for s in out.scores] == ["St Mary", "St Anne"]  # an unusable resend costs the score nothing

    assert sort_replies([good], reference=None, expect_update=False).earlier_events == {}

    hostile = _eval_reply(7, "St Luke", loss=float("nan"), accuracy=0.9, examples=20)  # its score is rejected ...
    hostile.content[EARLIER_RECORD] = ConfigRecord(earlier_events_record([_event(3)]))
    out = sort_replies([hostile], reference=None, expect_update=False, resent_of=("77", 4))
    assert [r.code for r in out.rejections] == ["invalid-update"]
    assert [e.server_round for e in out.earlier_events["St Luke"]] == [3]  # ... and its spending still counts


def test_a_masked_score_only_reply_resends_earlier_events_and_a_trained_one_keeps_its_own_round() -> None:
    """SecAgg+'s final scoring is a masked stage (expect_update) whose replies carry no DP event of their own."""
    score_only = _train_reply(5, "St Mary", _weights())
    score_only.content[EARLIER_RECORD] = ConfigRecord(earlier_events_record([_event(1), _event(2), _event(3)]))
    trained = _train_reply(6, "St Anne", _weights())
    trained.content["dp-event"] = ConfigRecord(_event(2).as_record())
    trained.content[EARLIER_RECORD] = ConfigRecord(earlier_events_record([_event(1), _event(3)]))  # 3 is not earlier

    out = sort_replies(
        [score_only, trained], reference=None, expect_update=True, accept=lambda *_: None, resent_of=("77", 4)
    )

    assert out.participants == ["St Mary", "St Anne"]
    assert [e.server_round for e in out.earlier_events["St Mary"]] == [1, 2, 3]
    assert "St Anne" not in out.earlier_events and out.dp_events["St Anne"].server_round == 2
