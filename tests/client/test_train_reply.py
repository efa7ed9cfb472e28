"""One train message at a hospital, with real data, a real accountant file and real Opacus."""

from __future__ import annotations

from pathlib import Path

import pytest
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_STATE

from client.accountant_state import HospitalAccountant
from client.app import evaluate as handle_evaluate
from client.app import train as handle_train
from client.local_round import LocalRound, RoundRefused
from client.secagg_client import _train_masked
from client.train_reply import train_round
from common.demo_data import DemoSplit, write_demo_split
from common.dp_event import EARLIER_RECORD, RECORD_FIELDS, earlier_events
from common.models import build_model
from common.schema import load_schema
from common.settings import RunSettings
from common.site_metrics import SCORE_ONLY_RECORD
from server.messaging import message_config
from tests.support.train_messages import train_message

pytestmark = [
    pytest.mark.filterwarnings("ignore:Secure RNG turned off:UserWarning"),
    pytest.mark.filterwarnings("ignore:Full backward hook is firing:UserWarning"),
]


@pytest.fixture(scope="module")
def split(tmp_path_factory: pytest.TempPathFactory) -> DemoSplit:
    return write_demo_split(tmp_path_factory.mktemp("data"), dataset="breast-cancer", hospitals=2)


def _message(
    split: DemoSplit, *, config: ConfigRecord | None = None, server_round: int = 1, message_type: str = "train"
) -> Message:
    schema = load_schema(split.schema_path)
    settings = RunSettings.from_run_config({"schema-path": str(split.schema_path), "local-epochs": 1})
    content = RecordDict(
        {
            "config": config if config is not None else message_config(settings, schema, server_round),
            "arrays": ArrayRecord(build_model(schema, seed=settings.seed).state_dict()),
        }
    )
    return train_message(content, message_type=message_type)


def _context(split: DemoSplit, state: Path) -> Context:
    node_config = {"institution": "hospital-1", "data-path": str(split.hospital_paths[0]), "state-dir": str(state)}
    return Context(run_id=5, node_id=1, node_config=node_config, state=RecordDict(), run_config={})


def test_a_round_refused_after_training_still_reports_what_it_spent(split: DemoSplit, tmp_path: Path) -> None:
    msg = _message(split)
    trained = train_round(msg, _context(split, tmp_path))
    assert trained.event is not None

    reply = trained.refuse(msg, RoundRefused(code="secagg-clipping", reason="too big", institution="hospital-1"))

    assert dict(reply.content["status"])["code"] == "secagg-clipping"
    assert dict(reply.content["dp-event"]) == trained.event.as_record()
    on_disk = HospitalAccountant.for_institution(tmp_path, "hospital-1")
    assert on_disk.history == [(trained.event.noise_multiplier, trained.event.sample_rate, trained.event.steps)]


def test_a_refusal_before_training_spends_nothing(split: DemoSplit, tmp_path: Path) -> None:
    def refuse(local: LocalRound) -> None:
        raise RoundRefused(code="secagg-weight-too-large", reason="many rows", institution=local.institution)

    with pytest.raises(RoundRefused, match="secagg-weight-too-large"):
        train_round(_message(split), _context(split, tmp_path), before_training=refuse)
    assert not (tmp_path / "privacy-accountant.json").exists()


def test_the_train_handler_answers_a_bad_round_config_with_a_refusal(split: DemoSplit, tmp_path: Path) -> None:
    config = message_config(
        RunSettings.from_run_config({"schema-path": str(split.schema_path)}), load_schema(split.schema_path), 1
    )
    del config["batch-size"]

    reply = handle_train(_message(split, config=config), _context(split, tmp_path))

    status = dict(reply.content["status"])
    assert (status["ok"], status["code"], status["institution"]) == (False, "bad-round-config", "hospital-1")
    assert "lacks batch-size" in status["reason"]
    assert "arrays" not in reply.content and "dp-event" not in reply.content


def test_the_final_scoring_resends_what_the_runs_rounds_committed(split: DemoSplit, tmp_path: Path) -> None:
    """A ClientApp killed in the last round after committing its spending sends no train reply, and none follows:
    the final scoring's reply (round num-rounds + 1) carries that round's event to the ledger."""
    context = _context(split, tmp_path)
    for server_round in (1, 2):
        train_round(_message(split, server_round=server_round), context)  # committed; as if killed before the reply

    reply = handle_evaluate(_message(split, server_round=3, message_type="evaluate"), context)

    assert dict(reply.content["status"])["ok"] is True
    resent = earlier_events(reply.content[EARLIER_RECORD], run_id="5", before_round=3)
    committed = HospitalAccountant.for_institution(tmp_path, "hospital-1").events
    assert [e.server_round for e in resent] == [1, 2]
    assert [e.as_record() for e in resent] == [{k: r[k] for k in RECORD_FIELDS} for r in committed]


def test_secaggs_score_only_final_scoring_resends_what_the_runs_rounds_committed(
    split: DemoSplit, tmp_path: Path
) -> None:
    """SecAgg+ in aggregate-metrics mode (its default) scores the final model in a score-only masked stage, not an
    evaluate message: that reply resends the run's events too."""
    context = _context(split, tmp_path)
    train_round(_message(split, server_round=1), context)  # committed; as if killed before the reply
    context.state[RECORD_KEY_STATE] = ConfigRecord({"max_weight": 1e6, "clipping_range": 8.0, "target_range": 1 << 22})
    msg = _message(split, server_round=2)
    msg.content[SCORE_ONLY_RECORD] = ConfigRecord({"score-only": True})

    reply = _train_masked(msg, context)

    assert dict(reply.content["status"])["ok"] is True and "dp-event" not in reply.content  # no training, no spending
    resent = earlier_events(reply.content[EARLIER_RECORD], run_id="5", before_round=2)
    assert [e.server_round for e in resent] == [1]
