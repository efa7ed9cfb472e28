"""A dead hospital does not end the run: quorum rules, and who results.json lists as dropped and back.

Rounds run against the real ClientApp handlers through the loopback grid; a dead node is one the SuperLink
answers for with Flower's own "Node Unavailable" reply, or no longer lists.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from flwr.app import ArrayRecord

from common.codecs import to_numpy
from common.demo_data import DemoSplit
from common.models import build_model
from common.schema import load_schema
from common.settings import RunSettings, quorum
from fedcare.demo import DemoOptions
from server.attendance import NOT_CONNECTED, Attendance, QuorumLost
from server.messaging import Dropout
from server.replies import Rejection, SortedReplies
from server.rounds import PlainRounds, RoundContext
from tests.server.loopback import LoopbackGrid

pytestmark = pytest.mark.usefixtures("serverapp_identity")


def test_the_default_min_nodes_is_a_majority_of_the_demo_federation() -> None:
    assert [quorum(n) for n in (1, 2, 3, 4, 5)] == [1, 2, 2, 3, 3]
    assert RunSettings(schema_path="s.json").min_nodes == quorum(DemoOptions().hospitals) == 2
    # SecAgg+'s defaults stay valid with a quorum of survivors: the threshold fits in 2 of 3.
    secagg = RunSettings.from_run_config({"schema-path": "s.json", "privacy-mode": "secagg"})
    assert secagg.reconstruction_threshold <= secagg.min_nodes


def test_a_hospital_that_dies_is_dropped_with_its_reason_and_rejoins_when_back(
    tmp_path: Path, split: DemoSplit
) -> None:
    hospitals = {
        node: {"institution": f"hospital-{node}", "data-path": str(path), "state-dir": str(tmp_path / f"s{node}")}
        for node, path in enumerate(split.hospital_paths, start=1)
    }
    settings = RunSettings.model_validate({"schema-path": str(split.schema_path), "dp": False, "local-epochs": 1})
    schema = load_schema(split.schema_path)
    (tmp_path / "run" / "models").mkdir(parents=True)
    grid = LoopbackGrid(hospitals)
    ctx = RoundContext(grid=grid, settings=settings, schema=schema, run_dir=tmp_path / "run")  # type: ignore[arg-type]
    rounds = PlainRounds(ctx, to_numpy(ArrayRecord(build_model(schema, seed=1).state_dict())))
    attendance = Attendance()

    def run_round(server_round: int) -> tuple[list[str], dict]:
        """One round as the ServerApp's loop runs it: its participants and its `dropped`/`rejoined` report."""
        nodes = attendance.wait_for_quorum(grid, minimum=settings.min_nodes, timeout=1.0)  # type: ignore[arg-type]
        absent = attendance.at_start(nodes, server_round=server_round)
        outcome = rounds.train(nodes=nodes, server_round=server_round)
        assert outcome.aggregated and outcome.replies.rejections == []  # a dead node is a dropout, not a rejection
        report = attendance.after_round(
            server_round=server_round, absent=absent, dropouts=ctx.take_dropouts(), replies=outcome.replies
        )
        return sorted(outcome.replies.participants), report

    assert run_round(1) == (["hospital-1", "hospital-2", "hospital-3"], {"dropped": {}, "rejoined": []})

    grid.unavailable = {3}  # died; the SuperLink still lists it, then answers for it
    participants, report = run_round(2)
    assert participants == ["hospital-1", "hospital-2"]
    assert list(report["dropped"]) == ["hospital-3"] and "heartbeats" in report["dropped"]["hospital-3"]["reason"]
    assert report["dropped"]["hospital-3"]["detected_after_s"] >= 0

    grid.unavailable, grid.offline = set(), {3}  # no longer listed
    participants, report = run_round(3)
    assert participants == ["hospital-1", "hospital-2"] and (3, "train") not in grid.received[-2:]
    assert report["dropped"] == {"hospital-3": {"reason": NOT_CONNECTED, "since_round": 2, "detected_after_s": None}}

    grid.offline = {2, 3}  # a minority left is no quorum: the run cannot go on, and says who is gone
    with pytest.raises(QuorumLost, match=r"min-nodes \(2, a quorum\).*hospital-3 \(since round 2\)"):
        attendance.wait_for_quorum(grid, minimum=settings.min_nodes, timeout=0.1)  # type: ignore[arg-type]

    grid.offline = set()  # restarted with the same kit: the same node id
    participants, report = run_round(4)
    assert participants == ["hospital-1", "hospital-2", "hospital-3"]
    assert report == {"dropped": {}, "rejoined": ["hospital-3"]}


def test_a_hospital_that_missed_a_secagg_stage_is_dropped_under_the_name_it_gave_earlier() -> None:
    """SecAgg+ names a hospital that died mid-protocol from its setup replies, before the loop ever heard of it."""
    attendance = Attendance()
    replies = SortedReplies(
        participants=["hospital-1", "hospital-2"],
        node_institutions={11: "hospital-1", 12: "hospital-2"},
        rejections=[Rejection("hospital-3", 13, "dropped-out", "no usable reply to SecAgg+ stage 'masked-vectors'")],
    )
    report = attendance.after_round(server_round=1, absent={}, dropouts=[], replies=replies)
    assert report["dropped"] == {
        "hospital-3": {"reason": "no usable reply to SecAgg+ stage 'masked-vectors'", "detected_after_s": None}
    }
    left_out = Dropout(13, "left out: suspected dead", None)  # the next round, still listed but silent to a ping
    again = attendance.after_round(server_round=2, absent={}, dropouts=[left_out], replies=SortedReplies())
    assert again["dropped"] == {"hospital-3": {"reason": "left out: suspected dead", "detected_after_s": None}}
    assert attendance.at_start([11, 12], server_round=3)["hospital-3"]["since_round"] == 1
