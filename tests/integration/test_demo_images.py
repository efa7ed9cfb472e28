"""`fedcare demo --dataset images` in HE mode: a real federation (SuperLink with TLS, three hospitals'
nodes, the budget service, DP-SGD) on the built-in image task.

Each hospital's data is its own folder of PNGs per class, named by its node config; the coordinator's
folder holds no image. The ServerApp pins the image task, the hospitals train the GroupNorm ResNet
under DP, the server adds ciphertexts, and the final model, decrypted as a hospital would, scores the
held-out images. Plain and SecAgg+ modes run the same task through the ServerApp loop in
tests/server/test_app_tasks.py.
"""

from __future__ import annotations

import time
import tomllib
from pathlib import Path

import pytest
from rich.console import Console

from common.schema import load_schema
from common.tasks.model_task import architecture_hash, build_task_model
from fedcare.demo import DemoOptions, run_demo

pytestmark = pytest.mark.slow


def test_the_image_demo_trains_the_resnet_on_png_folders_in_he_mode(tmp_path: Path) -> None:
    out, log = tmp_path / "demo", tmp_path / "demo.log"
    started = time.monotonic()
    with open(log, "w") as stream:
        outcome = run_demo(
            DemoOptions(hospitals=3, rounds=1, dataset="images", out=out, mode="he"),
            console=Console(file=stream, width=200),
        )
    wall = time.monotonic() - started
    printed = log.read_text()
    assert outcome.status == "finished:completed", printed
    results = outcome.results
    assert results["model"] == "resnet" and results["parameter_count"] == 24_610  # width 8, 10 classes, 4x4 grid
    assert [r["status"] for r in results["rounds"]] == ["aggregated"]
    assert sorted(results["rounds"][0]["participants"]) == ["hospital-1", "hospital-2", "hospital-3"]
    assert all(e is not None and e > 0 for e in results["rounds"][0]["epsilon"].values())
    assert outcome.holdout_accuracy is not None and 0.0 <= outcome.holdout_accuracy <= 1.0
    assert f"held-out data (no hospital saw it): {outcome.holdout_accuracy:.4f}" in printed

    for i in (1, 2, 3):
        site = out / "hospitals" / f"hospital-{i}"
        config = tomllib.loads((site / "node-config.toml").read_text())
        assert config["data-path"] == str(site / "images") and any((site / "images").glob("*/*.png"))
    assert not list((out / "coordinator").rglob("*.png"))  # no hospital's image at the coordinator

    schema = load_schema(out / "data" / "schema.json")
    pinned = f"task common.tasks.images 2, architecture {architecture_hash(build_task_model(schema))}"
    assert any(pinned in p.read_text(errors="replace") for p in (out / "coordinator" / "logs").glob("*.log"))
    print(f"\nimage demo (HE, 1 round) wall time {wall:.1f} s, held-out accuracy {outcome.holdout_accuracy:.4f}")
