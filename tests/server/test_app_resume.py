"""A whole HE run through `server.app.main` whose ServerApp dies in round 2, then resumes from its checkpoint.

In one process, against the real ClientApp handlers (loopback grid) with DP on: the resumed run has a new
Flower run id, yet the hospitals accept the encrypted sum checkpointed before the crash (it is bound to the
fedcare run id), no hospital is charged twice for round 2, and results.json accounts for every round once.
The real multi-process crash (SIGKILL of the ServerApp and of the SuperLink) is tests/integration/test_resume.py.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from flwr.app import Context, Message, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from common.demo_data import DemoSplit
from common.he.keys import write_keys
from server.app import main
from server.checkpoint import plan_resume, read_checkpoint
from tests.server.loopback import RUN, LoopbackGrid

pytestmark = pytest.mark.usefixtures("serverapp_identity")
RESUMED = 9_000_000_000_000_000_001  # the resumed submission's Flower run id (unsigned 64-bit, like Flower's)


class ServerAppDied(Exception):
    """Stands for the SIGKILL: raised while round 2's replies come in."""


def _events(tmp_path: Path, node: int) -> list[dict[str, Any]]:
    return json.loads((tmp_path / f"state-{node}" / "privacy-accountant.json").read_text())["events"]


def test_an_he_run_whose_serverapp_died_in_round_2_resumes_and_charges_no_round_twice(
    tmp_path: Path, split: DemoSplit, monkeypatch: pytest.MonkeyPatch
) -> None:
    keys = write_keys(tmp_path / "he")
    hospitals = {
        node: {
            "institution": f"hospital-{node}",
            "data-path": str(path),
            "state-dir": str(tmp_path / f"state-{node}"),
            "he-secret-context": str(keys.hospital_context),
        }
        for node, path in enumerate(split.hospital_paths, start=1)
    }

    def die_in_round_2(node: int, reply: Message) -> None:
        if node == 2 and reply.metadata.message_type == "train" and reply.metadata.group_id == "2":
            raise ServerAppDied  # hospitals 1 and 2 trained round 2 and were charged; hospital 3 never got it

    run_config = {
        "schema-path": str(split.schema_path),
        "results-dir": str(tmp_path / "runs"),
        "num-rounds": 2,
        "local-epochs": 1,
        "min-nodes": 3,
        "privacy-mode": "he",
        "he-public-context": str(keys.server_context),
        "poll-interval": 0.01,
    }
    with pytest.raises(ServerAppDied):
        context = Context(run_id=RUN, node_id=0, node_config={}, state=RecordDict(), run_config=run_config)
        main(LoopbackGrid(hospitals, tamper=die_in_round_2), context)  # type: ignore[arg-type]
    run_dir = tmp_path / "runs" / str(RUN)
    checkpoint = read_checkpoint(run_dir)
    assert checkpoint is not None and checkpoint.completed_round == 1
    assert isinstance(checkpoint.rounds["global_sum"], bytes) and "weights" not in checkpoint.rounds
    charged = {node: _events(tmp_path, node) for node in hospitals}
    assert [len(events) for events in charged.values()] == [2, 2, 1]

    plan = plan_resume(run_dir)
    assert plan.from_round == 2 and plan.run_config["fedcare-run-id"] == str(RUN)
    monkeypatch.setattr(TaskIdentity, "_run_id", RESUMED)  # the messages now carry the new Flower run id
    grid = LoopbackGrid(hospitals)
    grid.run.run_id = RESUMED
    main(grid, Context(run_id=RESUMED, node_id=0, node_config={}, state=RecordDict(), run_config=plan.run_config))  # type: ignore[arg-type]

    results = json.loads((run_dir / "results.json").read_text())
    assert results["status"] == "completed" and results["run_id"] == RUN
    # The checkpoint adds nothing readable to the server's folder: its sums are .he files like the models.
    assert {p.suffix for p in run_dir.rglob("*") if p.is_file()} == {".json", ".he"}
    assert [(e["round"], e["status"]) for e in results["rounds"]] == [(1, "aggregated"), (2, "aggregated")]
    for entry in results["rounds"]:
        assert entry["participants"] == ["hospital-1", "hospital-2", "hospital-3"] and entry["rejected"] == []
        assert entry["loss"] is not None  # federation figures, decrypted by the hospitals across the crash
    (resumed,) = results["resumed"]
    assert resumed["from_round"] == 2 and resumed["flower_run_id"] == str(RESUMED)
    # One event per (run, round) at every hospital, all under the fedcare run id; the two that were charged
    # for round 2 before the crash sent their kept update again instead of paying twice.
    for node in hospitals:
        events = _events(tmp_path, node)
        assert [(e["run_id"], e["server_round"]) for e in events] == [(str(RUN), 1), (str(RUN), 2)]
        if node in (1, 2):
            assert events == charged[node]
        assert results["rounds"][1]["epsilon"][f"hospital-{node}"] == pytest.approx(events[-1]["epsilon"])
