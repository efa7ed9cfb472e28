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


def _tls_pair(tmp_path):
    from common.tls import make_server_tls

    return make_server_tls(tmp_path / "tls")


def test_tls_needs_the_certificate_and_its_private_key(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    files = _tls_pair(tmp_path)
    settings = BudgetSettings(admin_token="y" * 32, tls_certfile=files.server_certificate, tls_keyfile=files.server_key)
    assert settings.scheme == "https" and settings.transport_problem() is None
    with pytest.raises(ValidationError, match="FEDCARE_BUDGET_TLS_KEYFILE is not"):
        BudgetSettings(admin_token="y" * 32, tls_certfile=files.server_certificate)
    with pytest.raises(ValidationError, match="does not exist.*fedcare federation budget-cert"):
        BudgetSettings(admin_token="y" * 32, tls_certfile=tmp_path / "nope.pem", tls_keyfile=files.server_key)
    files.server_key.chmod(0o644)
    with pytest.raises(ValidationError, match=f"chmod 600 {files.server_key}"):
        BudgetSettings(admin_token="y" * 32, tls_certfile=files.server_certificate, tls_keyfile=files.server_key)
    files.server_key.chmod(0o600)
    monkeypatch.setenv("FEDCARE_BUDGET_TLS_CERTFILE", str(files.server_certificate))
    monkeypatch.setenv("FEDCARE_BUDGET_TLS_KEYFILE", str(files.server_key))
    assert BudgetSettings(admin_token="y" * 32).tls_keyfile == files.server_key


def test_plain_http_only_when_asked_for(monkeypatch: pytest.MonkeyPatch) -> None:
    problem = BudgetSettings(admin_token="y" * 32).transport_problem()
    assert "FEDCARE_BUDGET_TLS_CERTFILE" in problem and "--insecure-http" in problem
    monkeypatch.setenv("FEDCARE_BUDGET_INSECURE_HTTP", "1")
    settings = BudgetSettings(admin_token="y" * 32)
    assert settings.transport_problem() is None and settings.scheme == "http"


def test_serve_refuses_to_start_without_tls_unless_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FEDCARE_ADMIN_TOKEN", "y" * 32)
    monkeypatch.delenv("FEDCARE_BUDGET_INSECURE_HTTP", raising=False)
    result = CliRunner().invoke(budget_app, ["serve", "--database-url", "sqlite:///:memory:"])
    assert result.exit_code == 2 and "refusing to start" in result.output and "no TLS certificate" in result.output


def test_the_key_file_never_reaches_the_log(tmp_path, caplog: pytest.LogCaptureFixture) -> None:
    files = _tls_pair(tmp_path)
    key_text = files.server_key.read_text()
    with caplog.at_level(logging.DEBUG):
        settings = BudgetSettings(
            admin_token="y" * 32, tls_certfile=files.server_certificate, tls_keyfile=files.server_key
        )
        logging.getLogger("fedcare.budget").info("settings %r", settings)
    body = key_text.splitlines()[1]
    assert body not in caplog.text and body not in repr(settings)
