"""A round that comes back after a coordinator crash is not charged twice (client/kept_update.py).

Real ClientApp handlers with real Opacus training, through the server's loopback grid: the same
(run, round) asked again gets the very update that was sent (nothing new released, nothing new
charged); without a kept update (none left the node), it is trained under the charge already recorded.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from flwr.app import ArrayRecord

from client.kept_update import KEPT_FILE
from common.codecs import to_numpy
from common.demo_data import DemoSplit, write_demo_split
from common.models import build_model
from common.schema import load_schema
from common.settings import RunSettings
from server.rounds import PlainRounds, RoundContext
from tests.server.conftest import serverapp_identity  # noqa: F401  (the loopback grid's Flower identity)
from tests.server.loopback import RUN, LoopbackGrid

pytestmark = pytest.mark.usefixtures("serverapp_identity")
RESUMED_FLOWER_RUN = 4242  # the resumed submission's own Flower run id: not the one the hospitals file under


@pytest.fixture(scope="module")
def split(tmp_path_factory: pytest.TempPathFactory) -> DemoSplit:
    return write_demo_split(tmp_path_factory.mktemp("data"), dataset="breast-cancer", hospitals=2)


def _rounds(tmp_path: Path, split: DemoSplit, *, flower_run_id: int, **config: str) -> PlainRounds:
    hospitals = {
        node: {"institution": f"hospital-{node}", "data-path": str(path), "state-dir": str(tmp_path / f"state-{node}")}
        for node, path in enumerate(split.hospital_paths, start=1)
    }
    settings = RunSettings.model_validate(
        {"schema-path": str(split.schema_path), "num-rounds": 2, "local-epochs": 1, **config}
    )
    schema = load_schema(split.schema_path)
    (tmp_path / "run" / "models").mkdir(parents=True, exist_ok=True)
    grid = LoopbackGrid(hospitals)
    grid.run.run_id = flower_run_id
    ctx = RoundContext(grid=grid, settings=settings, schema=schema, run_dir=tmp_path / "run")  # type: ignore[arg-type]
    return PlainRounds(ctx, to_numpy(ArrayRecord(build_model(schema, seed=settings.seed).state_dict())))


def _events(tmp_path: Path, node: int) -> list[dict[str, object]]:
    return json.loads((tmp_path / f"state-{node}" / "privacy-accountant.json").read_text())["events"]


def test_a_round_asked_again_after_a_crash_is_sent_again_and_charged_once(tmp_path: Path, split: DemoSplit) -> None:
    first = _rounds(tmp_path, split, flower_run_id=RUN)
    outcome = first.train(nodes=[1, 2], server_round=1)
    assert outcome.aggregated and len(_events(tmp_path, 1)) == 1
    charged = {node: _events(tmp_path, node) for node in (1, 2)}
    assert all(e[0]["run_id"] == str(RUN) and e[0]["server_round"] == 1 for e in charged.values())

    # The coordinator crashed before checkpointing round 1; the resumed run (a new Flower run id, the same
    # fedcare run id) asks for round 1 again.
    resumed = _rounds(tmp_path, split, flower_run_id=RESUMED_FLOWER_RUN, **{"fedcare-run-id": str(RUN)})
    again = resumed.train(nodes=[1, 2], server_round=1)
    assert again.aggregated and again.replies.rejections == []
    assert {node: _events(tmp_path, node) for node in (1, 2)} == charged  # nothing new charged
    assert all(np.array_equal(resumed.weights[k], first.weights[k]) for k in first.weights)  # the same updates
    assert again.replies.dp_events["hospital-1"].as_record() == {
        k: v for k, v in charged[1][0].items() if k != "recorded_at"
    }

    # Hospital 2 stopped while training round 2: charged, but its update never left (none kept).
    resumed.train(nodes=[1, 2], server_round=2)
    (tmp_path / "state-2" / KEPT_FILE).unlink()
    before = {node: _events(tmp_path, node) for node in (1, 2)}
    last = _rounds(tmp_path, split, flower_run_id=RESUMED_FLOWER_RUN + 1, **{"fedcare-run-id": str(RUN)})
    last.weights = resumed.weights
    replay = last.train(nodes=[1, 2], server_round=2)
    assert replay.aggregated and sorted(replay.replies.participants) == ["hospital-1", "hospital-2"]
    assert {node: _events(tmp_path, node) for node in (1, 2)} == before  # trained under the recorded charge
    assert [(e["run_id"], e["server_round"]) for e in before[2]] == [(str(RUN), 1), (str(RUN), 2)]
    assert (tmp_path / "state-2" / KEPT_FILE).exists()  # kept again before it left
