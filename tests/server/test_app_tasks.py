"""The image task through the ServerApp's own loop (`server.app.main`) and the real ClientApp handlers in
plain and SecAgg+ modes (loopback grid: real Opacus, Flower's real SecAgg+ mod and workflow); and a
hospital whose installed task differs from the run's pin refusing by name.

HE mode on the image task is the real federation of tests/integration/test_demo_images.py.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from flwr.app import ArrayRecord, Context, Message, RecordDict
from sklearn.datasets import load_digits

from client.app import train as handle_train
from common.demo_data import DemoSplit
from common.demo_images import image_demo_schema, write_class_folders
from common.schema import load_schema, save_schema
from common.settings import RunSettings
from common.tasks.model_task import pin_task
from server.app import main
from server.messaging import message_config
from tests.server.loopback import RUN, LoopbackGrid
from tests.support.train_messages import train_message

pytestmark = [
    pytest.mark.usefixtures("serverapp_identity"),
    pytest.mark.filterwarnings("ignore:Secure RNG turned off:UserWarning"),
    pytest.mark.filterwarnings("ignore:Full backward hook is firing:UserWarning"),
]


@pytest.fixture(scope="module")
def split(tmp_path_factory: pytest.TempPathFactory) -> DemoSplit:
    """Tiny on purpose (30 digits per hospital, 8x8, ResNet width 4): the modes' paths, not accuracy."""
    root = tmp_path_factory.mktemp("images")
    digits = load_digits()
    images, labels = digits.images[:90] / 16.0, digits.target[:90]
    schema = image_demo_schema(mean=0.3, std=0.4, size=8, width=4)
    assert schema.image is not None
    save_schema(schema, root / "schema.json")
    paths = [
        write_class_folders(root / f"hospital-{i + 1}", images[i::3], labels[i::3], names=schema.image.classes)
        for i in range(3)
    ]
    return DemoSplit(schema_path=root / "schema.json", hospital_paths=paths, holdout_path=paths[0])


def _node_config(split: DemoSplit, node: int, tmp_path: Path) -> dict[str, str]:
    return {
        "institution": f"hospital-{node}",
        "data-path": str(split.hospital_paths[node - 1]),
        "state-dir": str(tmp_path / f"state-{node}"),
    }


@pytest.mark.parametrize("mode", ["plain", "secagg"])  # he: the real federation in tests/integration
def test_one_dp_round_on_the_image_task_in_plain_and_secagg_modes(mode: str, split: DemoSplit, tmp_path: Path) -> None:
    hospitals = {node: _node_config(split, node, tmp_path) for node in (1, 2, 3)}
    run_config: dict[str, Any] = {
        "schema-path": str(split.schema_path),
        "results-dir": str(tmp_path / "runs"),
        "num-rounds": 1,
        "local-epochs": 1,
        "batch-size": 8,
        "target-epsilon": 0.0,  # a fixed noise: the per-run noise search would cost more than the round
        "noise-multiplier": 1.0,
        "min-nodes": 3,
        "privacy-mode": mode,
        "poll-interval": 0.01,
    }
    started = time.monotonic()
    main(
        LoopbackGrid(hospitals),
        Context(run_id=RUN, node_id=0, node_config={}, state=RecordDict(), run_config=run_config),
    )  # type: ignore[arg-type]
    results = json.loads((tmp_path / "runs" / str(RUN) / "results.json").read_text())
    assert results["status"] == "completed" and results["privacy_mode"] == mode
    assert results["model"] == "resnet" and results["parameter_count"] < 8_000  # width 4, its 4x4-grid head
    assert [r["status"] for r in results["rounds"]] == ["aggregated"]
    assert sorted(results["rounds"][0]["participants"]) == ["hospital-1", "hospital-2", "hospital-3"]
    assert all(e is not None and e > 0 for e in results["rounds"][0]["epsilon"].values())  # DP-SGD ran, counted
    assert 0.0 <= results["rounds"][0]["accuracy"] <= 1.0  # the final scoring reached the server (or its sum did)
    print(f"\n{mode}: one image round in {time.monotonic() - started:.1f} s")


def _train_message(split: DemoSplit, *, task_version: str) -> Message:
    settings = RunSettings.from_run_config({"schema-path": str(split.schema_path), "local-epochs": 1})
    pinned, model = pin_task(load_schema(split.schema_path), seed=settings.seed)
    content = RecordDict(
        {
            "config": message_config(settings, pinned.model_copy(update={"task_version": task_version}), 1),
            "arrays": ArrayRecord(model.state_dict()),
        }
    )
    return train_message(content)


def test_a_hospital_with_another_task_version_refuses_the_round_by_name(split: DemoSplit, tmp_path: Path) -> None:
    context = Context(
        run_id=5, node_id=1, node_config=_node_config(split, 1, tmp_path), state=RecordDict(), run_config={}
    )
    reply = handle_train(_train_message(split, task_version="0.9"), context)
    status = dict(reply.content["status"])
    assert (status["ok"], status["code"], status["institution"]) == (False, "task-mismatch", "hospital-1")
    assert "task common.tasks.images version 2 is installed here, but this run pins version 0.9" in status["reason"]
    assert "arrays" not in reply.content and not (tmp_path / "state-1").exists()  # nothing trained, nothing spent
