"""Test support: a consortium's own task, written as a package into tmp_path and imported by name."""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from common.schema import DatasetSchema

MakeTask = Callable[..., str]


@pytest.fixture
def make_task(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[MakeTask]:
    """Write package `name` (its __init__.py from `model_code`, its data.py from `data_code`) and return its name."""
    written: list[str] = []
    monkeypatch.syspath_prepend(str(tmp_path / "site-packages"))

    def make(name: str, model_code: str, data_code: str | None = None) -> str:
        package = tmp_path / "site-packages" / name
        package.mkdir(parents=True)
        (package / "__init__.py").write_text(textwrap.dedent(model_code))
        if data_code is not None:
            (package / "data.py").write_text(textwrap.dedent(data_code))
        written.append(name)
        return name

    yield make
    for name in written:  # each test's package is its own: forget it, and its data submodule
        for module in [m for m in sys.modules if m == name or m.startswith(f"{name}.")]:
            del sys.modules[module]


def task_schema(module: str, **fields: object) -> DatasetSchema:
    return DatasetSchema(label="y", num_classes=3, task_module=module, options={"inputs": 4}, **fields)


BATCHNORM_TASK = """
    from torch import nn

    __version__ = "2.1.0"


    def build_model(schema):
        inputs = schema.options["inputs"]
        return nn.Sequential(nn.Linear(inputs, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, schema.num_classes))
"""
