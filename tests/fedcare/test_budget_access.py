"""`fedcare budget show --kit`: what it reads from a site directory, and the one-line messages it prints."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from common.tls import make_server_tls
from fedcare.budget_access import BudgetAccess, BudgetAccessError, access_from_site, explain, read_token_file
from fedcare.budget_cli import budget_app
from server.budget.process import free_port
from server.budget_client.connection import (
    BudgetAuthError,
    BudgetServiceError,
    BudgetServiceUnavailable,
    BudgetTlsError,
)

TOKEN = "fcb_" + "t" * 43
pytestmark = pytest.mark.usefixtures("wide_budget_consoles")  # the tests count lines


def _site(tmp_path: Path, *, url: str = "https://budget.example.org:8470", token_mode: int = 0o600) -> Path:
    site = tmp_path / "site"
    site.mkdir()
    (site / "kit.json").write_text(json.dumps({"institution": "St Mary", "budget-url": url}))
    (site / "ca.crt").write_text("-----BEGIN CERTIFICATE-----\n")
    token = site / "budget-token"
    token.write_text(TOKEN + "\n")
    token.chmod(token_mode)
    return site


def test_the_site_directory_gives_url_ca_and_token(tmp_path: Path) -> None:
    site = _site(tmp_path)
    access = access_from_site(site)
    assert (access.url, access.token, access.ca_certificate) == (
        "https://budget.example.org:8470",
        TOKEN,
        site / "ca.crt",
    )
    assert access_from_site(site, url="https://10.0.0.9:8470").url == "https://10.0.0.9:8470"
    assert "St Mary" in access.whose and TOKEN not in access.whose


def test_a_readable_token_file_is_refused_with_the_fix(tmp_path: Path) -> None:
    site = _site(tmp_path, token_mode=0o644)
    with pytest.raises(BudgetAccessError, match=f"chmod 600 {site / 'budget-token'}"):
        access_from_site(site)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda s: (s / "kit.json").unlink(), "not a site directory"),
        (lambda s: (s / "kit.json").write_text(json.dumps({"budget-url": ""})), "names no budget service"),
        (lambda s: (s / "ca.crt").unlink(), "ca.crt is missing"),
        (lambda s: (s / "budget-token").unlink(), "not registered this institution"),
        (lambda s: (s / "budget-token").write_text("two words\n"), "does not hold one token"),
    ],
)
def test_an_incomplete_site_says_what_is_missing(tmp_path: Path, damage, message: str) -> None:
    site = _site(tmp_path)
    damage(site)
    with pytest.raises(BudgetAccessError, match=message):
        access_from_site(site)


def test_the_cli_turns_a_bad_site_into_one_line(tmp_path: Path) -> None:
    result = CliRunner(env={"COLUMNS": "400"}).invoke(budget_app, ["show", "--kit", str(tmp_path / "nowhere")])
    assert result.exit_code == 2 and "not a site directory" in result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1


def test_an_unreachable_service_is_one_line_naming_the_address(tmp_path: Path) -> None:
    url = f"https://127.0.0.1:{free_port()}"
    site = _site(tmp_path, url=url)
    shutil.copyfile(make_server_tls(tmp_path / "tls").ca_certificate, site / "ca.crt")
    result = CliRunner(env={"COLUMNS": "400"}).invoke(budget_app, ["show", "--kit", str(site)])
    assert result.exit_code == 1 and len(result.output.strip().splitlines()) == 1
    assert f"cannot reach the budget service at {url}" in result.output and "firewall" in result.output
    assert "Traceback" not in result.output and TOKEN not in result.output


def test_refusals_become_messages_a_person_can_act_on() -> None:
    kit = BudgetAccess("https://b:8470", TOKEN, Path("ca.crt"), "St Mary's site (SITE/budget-token)", Path("SITE"))
    unknown = BudgetAuthError("GET /v1/budgets: 401 unknown or invalid token", status_code=401, detail="unknown")
    assert "did not accept St Mary's site" in explain(unknown, kit) and "fedcare institution install" in explain(
        unknown, kit
    )
    other = BudgetAuthError("x", status_code=403, detail="an institution may read only its own records")
    assert explain(other, kit) == "refused (403): an institution may read only its own records"
    down = BudgetServiceUnavailable("x", detail="ConnectError: refused")
    assert "cannot reach the budget service at https://b:8470 (ConnectError: refused)" in explain(down, kit)
    assert explain(BudgetTlsError("TLS with https://b:8470 failed"), kit) == "TLS with https://b:8470 failed"
    assert explain(BudgetServiceError("x", status_code=404, detail="no institution named 'x'"), kit) == (
        "the budget service refused (404): no institution named 'x'"
    )
    for message in (explain(e, kit) for e in (unknown, other, down)):
        assert TOKEN not in message and "\n" not in message


def test_a_damaged_ca_file_is_one_line(tmp_path: Path) -> None:
    result = CliRunner(env={"COLUMNS": "400"}).invoke(budget_app, ["show", "--kit", str(_site(tmp_path))])
    assert (
        result.exit_code == 1 and "cannot load the CA certificate" in result.output and "Traceback" not in result.output
    )


def test_a_token_file_is_read_not_passed(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text(TOKEN)
    path.chmod(0o600)
    assert read_token_file(path) == TOKEN
