"""Fixtures for round logic run in one process (`tests/server/loopback.py`)."""

from __future__ import annotations

import pytest
from flwr.supercore.task_identity import TaskIdentity

from tests.server.loopback import RUN


@pytest.fixture
def serverapp_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    """Messages built outside a real ServerApp process need the task identity Flower would set."""
    monkeypatch.setattr(TaskIdentity, "_task_id", 1)
    monkeypatch.setattr(TaskIdentity, "_run_id", RUN)
    monkeypatch.setattr(TaskIdentity, "_node_id", 0)
