"""examples/custom_task/ works as docs/tasks.md says: its schema names it, fedcare builds, fixes and pins its
model, and its loader reads RGB photo folders, as at a hospital that installed the package."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from client.task_data import load_task_data, task_loss
from common.schema import load_schema
from common.tasks.model_task import architecture_hash, build_task_model, pin_task

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "custom_task"


@pytest.fixture
def installed(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The package importable by name, as `pip install ./examples/custom_task` makes it."""
    monkeypatch.syspath_prepend(str(EXAMPLE))
    yield
    for name in [m for m in sys.modules if m == "derm_task" or m.startswith("derm_task.")]:
        del sys.modules[name]


def test_the_example_model_is_built_fixed_and_pinned(installed: None, caplog: pytest.LogCaptureFixture) -> None:
    schema = load_schema(EXAMPLE / "schema.json")
    assert (schema.task_module, schema.task_version) == ("derm_task", "0.1.0")
    with caplog.at_level(logging.WARNING, logger="flwr.fedcare.task"):
        pinned, model = pin_task(schema, seed=0)
    assert "layer 'features.1' (BatchNorm2d) cannot be trained with DP-SGD; replaced by GroupNorm" in caplog.text
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert architecture_hash(build_task_model(pinned)) == pinned.model_hash  # a hospital builds the same model
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 3)
    loss = task_loss(schema)
    assert isinstance(loss, nn.CrossEntropyLoss) and loss.label_smoothing == 0.05


def test_the_example_loader_reads_photo_folders_and_skips_rejected_photos(installed: None, tmp_path: Path) -> None:
    schema = load_schema(EXAMPLE / "schema.json")
    for i, name in enumerate(["benign", "melanoma", "melanoma"]):
        (tmp_path / name).mkdir(exist_ok=True)
        Image.fromarray(np.full((40, 50, 3), 60 * i, dtype=np.uint8)).save(tmp_path / name / f"p{i}.jpg")
    (tmp_path / "melanoma" / "p2.reject").write_text("blurred")
    data = load_task_data(tmp_path, schema)
    assert data.features.shape == (2, 3, 32, 32) and data.labels.tolist() == [0, 1]
