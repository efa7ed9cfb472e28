"""The service refuses placeholder admin tokens outside development mode, and says so."""

from __future__ import annotations

import logging

import pytest
from pydantic import ValidationError
from typer.testing import CliRunner

from fedcare.budget_cli import budget_app
from server.budget.core.config import BudgetSettings


@pytest.mark.parametrize("token", ["", "changeme", "CHANGETHIS", "short-token"])
def test_placeholder_admin_tokens_are_refused(token: str) -> None:
    with pytest.raises(ValidationError, match="FEDCARE_ADMIN_TOKEN"):
        BudgetSettings(admin_token=token)


def test_development_mode_allows_them_loudly(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="fedcare.budget"):
        settings = BudgetSettings(admin_token="changeme", development=True)
        generated = BudgetSettings(admin_token="", development=True)
    assert settings.admin_token.get_secret_value() == "changeme"
    assert len(generated.admin_token.get_secret_value()) >= 32
    assert caplog.text.count("DEVELOPMENT MODE") == 2


def test_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FEDCARE_ADMIN_TOKEN", "x" * 40)
    monkeypatch.setenv("DATABASE_URL", "postgresql://budget@db/ledger")
    settings = BudgetSettings()
    assert settings.database_url == "postgresql://budget@db/ledger"
    assert settings.admin_token.get_secret_value() == "x" * 40 and not settings.development
    monkeypatch.setenv("FEDCARE_BUDGET_DATABASE_URL", "sqlite:///other.db")
    assert BudgetSettings().database_url == "sqlite:///other.db"


def test_default_database_is_a_local_sqlite_file(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.delenv("FEDCARE_BUDGET_DATABASE_URL", raising=False)
    assert BudgetSettings(admin_token="y" * 32).database_url == "sqlite:///./fedcare-budget.db"


def test_serve_refuses_to_start_with_a_placeholder(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FEDCARE_ADMIN_TOKEN", "changeme")
    result = CliRunner().invoke(budget_app, ["serve", "--database-url", "sqlite:///:memory:"])
    assert result.exit_code == 2
    assert "refusing to start" in result.output and "placeholder" in result.output
