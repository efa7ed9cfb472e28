"""Fixtures for round logic run in one process (`tests/server/loopback.py`)."""

from __future__ import annotations

from typing import Any

import pytest
from flwr.supercore.task_identity import TaskIdentity

from common.demo_data import DemoSplit, write_demo_split
from common.he.keys import write_keys
from tests.server.loopback import RUN


@pytest.fixture(scope="module")
def split(tmp_path_factory: pytest.TempPathFactory) -> DemoSplit:
    """The breast-cancer demo split over 3 hospitals, once per module (a module may define its own)."""
    return write_demo_split(tmp_path_factory.mktemp("data"), dataset="breast-cancer", hospitals=3)


@pytest.fixture(scope="module")
def he_keys(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A CKKS key set (server context and a hospital's secret context), once per module."""
    return write_keys(tmp_path_factory.mktemp("he"))


@pytest.fixture
def serverapp_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    """Messages built outside a real ServerApp process need the task identity Flower would set."""
    monkeypatch.setattr(TaskIdentity, "_task_id", 1)
    monkeypatch.setattr(TaskIdentity, "_run_id", RUN)
    monkeypatch.setattr(TaskIdentity, "_node_id", 0)
