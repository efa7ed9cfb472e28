"""int8 on the wire, round by round against the real ClientApp handlers (loopback grid): what travels,
what aggregates, and a malformed int8 update rejected with its reason."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, Message

from common.codecs import to_numpy
from common.demo_data import DemoSplit
from common.int8_wire import FLAT_RECORD, FLOAT_RECORD, INT8_RECORD, SCALES
from common.models import build_model
from common.schema import load_schema
from common.settings import RunSettings
from server.rounds import PlainRounds, RoundContext
from server.secagg_rounds import SecAggRounds
from tests.server.loopback import LoopbackGrid

pytestmark = pytest.mark.usefixtures("serverapp_identity")
HOSPITALS = ["hospital-1", "hospital-2", "hospital-3"]


@dataclass
class RecordingGrid(LoopbackGrid):
    """The loopback grid, keeping which weight records each message to a hospital carried."""

    sent: list[set[str]] = field(default_factory=list)

    def push_messages(self, messages: Iterable[Message]) -> list[str]:
        messages = list(messages)
        self.sent += [{FLOAT_RECORD, FLAT_RECORD, INT8_RECORD} & set(m.content) for m in messages]
        return super().push_messages(messages)


def _rounds(tmp_path: Path, split: DemoSplit, *, mode: str, tamper=lambda node, reply: None):  # type: ignore[no-untyped-def]
    hospitals = {
        node: {"institution": f"hospital-{node}", "data-path": str(path), "state-dir": str(tmp_path / f"state-{node}")}
        for node, path in enumerate(split.hospital_paths, start=1)
    }
    settings = RunSettings.model_validate(
        {"schema-path": str(split.schema_path), "dp": False, "local-epochs": 1, "privacy-mode": mode,
         "update-compression": "int8", "metrics": "per-site"}
    )  # fmt: skip
    schema = load_schema(split.schema_path)
    (tmp_path / "run" / "models").mkdir(parents=True)
    grid = RecordingGrid(hospitals, tamper=tamper)
    ctx = RoundContext(grid=grid, settings=settings, schema=schema, run_dir=tmp_path / "run")  # type: ignore[arg-type]
    initial = to_numpy(ArrayRecord(build_model(schema, seed=settings.seed).state_dict()))
    rounds = SecAggRounds.create(ctx, weights=initial) if mode == "secagg" else PlainRounds(ctx, initial)
    return rounds, grid, initial


def test_plain_int8_travels_both_ways_aggregates_and_is_counted(tmp_path: Path, split: DemoSplit) -> None:
    replies: list[set[str]] = []
    rounds, grid, initial = _rounds(
        tmp_path, split, mode="plain", tamper=lambda node, reply: replies.append(set(reply.content))
    )
    outcome = rounds.train(nodes=[1, 2, 3], server_round=1)
    assert outcome.aggregated and sorted(outcome.replies.participants) == HOSPITALS
    assert grid.sent == [{INT8_RECORD}] * 3  # the global model went down as int8
    assert all(
        INT8_RECORD in r and not {FLOAT_RECORD, FLAT_RECORD} & r for r in replies
    )  # and each update came up as int8
    assert not all(np.array_equal(rounds.weights[k], initial[k]) for k in initial)

    floats = sum(v.size for v in initial.values()) * 4
    assert sorted(outcome.replies.bytes_up) == HOSPITALS
    assert all(n < floats for n in outcome.replies.bytes_up.values())  # under the float32 model alone
    assert outcome.replies.bytes_down is not None and outcome.replies.bytes_down < floats

    final = rounds.evaluate(nodes=[1, 2, 3], server_round=2)  # num-rounds is 5: still a training round
    assert grid.sent[-3:] == [{INT8_RECORD}] * 3 and len(final.scores) == 3
    rounds.evaluate(nodes=[1], server_round=6)  # the final scoring reads the saved model exactly
    assert grid.sent[-1] == {FLAT_RECORD}


def test_a_malformed_int8_update_is_rejected_and_the_others_aggregate(tmp_path: Path, split: DemoSplit) -> None:
    def nan_scale(node: int, reply: Message) -> None:
        if node == 2:
            record = reply.content[INT8_RECORD]
            scales = record[SCALES].numpy().copy()
            scales[0] = np.nan
            reply.content[INT8_RECORD] = ArrayRecord(OrderedDict([*record.items(), (SCALES, Array(scales))]))

    rounds, _, _ = _rounds(tmp_path, split, mode="plain", tamper=nan_scale)
    outcome = rounds.train(nodes=[1, 2, 3], server_round=1)
    assert outcome.aggregated and sorted(outcome.replies.participants) == ["hospital-1", "hospital-3"]
    [rejection] = outcome.replies.rejections
    assert (rejection.institution, rejection.code) == ("hospital-2", "invalid-update")
    assert "scales must be finite" in rejection.reason
    assert "hospital-2" in outcome.replies.bytes_up  # what arrived is counted, used or not


def test_secagg_sends_the_model_down_as_int8_and_counts_every_stage(tmp_path: Path, split: DemoSplit) -> None:
    rounds, grid, initial = _rounds(tmp_path, split, mode="secagg")
    outcome = rounds.train(nodes=[1, 2, 3], server_round=1)
    assert outcome.aggregated, outcome.reason
    assert [s for s in grid.sent if s] == [{INT8_RECORD}] * 3  # only the masked-vectors stage carries the model
    assert sorted(outcome.replies.bytes_up) == HOSPITALS
    model_bytes = sum(v.size for v in initial.values())
    assert outcome.replies.bytes_down is not None and model_bytes < outcome.replies.bytes_down < 4 * model_bytes
