"""A budget service app in the test process, on a SQLite file, for the clients to talk to."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

# Starlette nags about httpx2 and an anyio alias; neither matters to these tests.
warnings.filterwarnings("ignore", message=".*httpx2.*")
warnings.filterwarnings("ignore", message=".*BlockingPortal alias.*")

import opacus.accountants  # noqa: E402,F401  (imported whole before any app thread warms it up: no import race)
from fastapi.testclient import TestClient  # noqa: E402

from server.budget.core.config import BudgetSettings  # noqa: E402
from server.budget.main import create_app  # noqa: E402
from tests.server.budget.helpers import ADMIN_TOKEN  # noqa: E402


@pytest.fixture
def app_client(tmp_path: Path) -> Iterator[TestClient]:
    app = create_app(BudgetSettings(database_url=f"sqlite:///{tmp_path / 'b.db'}", admin_token=ADMIN_TOKEN))
    with TestClient(app) as test_client:
        yield test_client
    app.state.engine.dispose()
