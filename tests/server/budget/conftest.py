"""Fixtures for the budget service: databases (SQLite files, a real PostgreSQL), apps, live services, Chromium."""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
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
from server.budget.process import running_budget_service  # noqa: E402
from tests.server.budget.helpers import ADMIN_TOKEN  # noqa: E402
from tests.support.local_postgres import (  # noqa: E402
    LocalPostgres,
    PostgresUnavailable,
    find_postgres_bin,
    running_postgres,
)

_databases = itertools.count()


def _apt_install(package: str) -> None:
    """The test setup installs Debian packages it needs (as root with apt-get), loudly, or fails saying why."""
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        pytest.fail(
            f"{package} is missing and cannot be installed here (needs root and apt-get); "
            f"install it with `apt-get install -y {package}`"
        )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", package]):
        result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
        if result.returncode != 0:
            pytest.fail(f"`{' '.join(command)}` failed: {result.stderr[-2000:]}")


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[LocalPostgres]:
    if find_postgres_bin() is None:
        _apt_install("postgresql")
    try:
        with running_postgres(durable=False) as pg:
            yield pg
    except PostgresUnavailable as exc:
        pytest.fail(f"could not start a PostgreSQL server for the tests: {exc}")


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.slow)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty database: a SQLite file, or a new database on the session's PostgreSQL server."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'budget.db'}"
    pg: LocalPostgres = request.getfixturevalue("postgres_server")
    return pg.create_database(f"budget_test_{next(_databases)}")


@pytest.fixture
def settings(database_url: str) -> BudgetSettings:
    return BudgetSettings(database_url=database_url, admin_token=ADMIN_TOKEN, token_cache_seconds=0)


@pytest.fixture
def client(settings: BudgetSettings) -> Iterator[TestClient]:
    app = create_app(settings)
    with TestClient(app) as test_client:
        yield test_client
    app.state.engine.dispose()


@pytest.fixture
def live_service(tmp_path: Path) -> Iterator[str]:
    """The service as a real uvicorn process on 127.0.0.1, on a SQLite file in tmp_path."""
    with running_budget_service(
        database_url=f"sqlite:///{tmp_path / 'live.db'}", admin_token=ADMIN_TOKEN, log_path=tmp_path / "service.log"
    ) as url:
        yield url


@pytest.fixture(scope="session")
def chromium() -> str:
    """Debian's chromium, installed by the test setup when missing."""
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    _apt_install("chromium")
    found = shutil.which("chromium")
    if not found:
        pytest.fail("apt-get installed chromium but no `chromium` is on PATH")
    return found
