"""The budget half of registration against a real budget service.

Pending while it is down, then synced, rotated, revoked."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedcare.federation_dir import init_federation
from fedcare.kits import KitOptions
from fedcare.registration import BudgetTarget, register_institution, revoke_institution, sync
from server.budget.process import free_port, running_budget_service
from server.budget_client.admin import BudgetAdmin
from server.budget_client.connection import BudgetAuthError, BudgetConnection


def _reads_own_budget(url: str, token: str) -> bool:
    with BudgetConnection(url, token, retries=0) as client:
        try:
            return set(client.budgets()) == {"St Mary"}
        except BudgetAuthError:
            return False


def test_pending_budget_registration_is_synced_rotated_and_revoked(tmp_path: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    fed = init_federation(tmp_path / "fed", budget_url=url)
    budget = BudgetTarget(url, fed.admin_token())
    report = register_institution(fed, KitOptions("St Mary", 6.0, 1e-5), superlink=None, budget=budget)
    assert report.record.budget == "pending" and not (report.kit / "budget-token").exists()
    assert any("budget service not reachable" in p for p in report.problems)

    with running_budget_service(
        database_url=f"sqlite:///{tmp_path / 'ledger.db'}", admin_token=fed.admin_token(), port=port
    ):
        (synced,) = sync(fed, superlink=None, budget=budget)
        assert synced.record.budget == "registered"
        token_file = synced.kit / "budget-token"
        assert token_file.stat().st_mode & 0o077 == 0
        first = token_file.read_text().strip()
        assert _reads_own_budget(url, first)

        rotated = register_institution(
            fed, KitOptions("St Mary", 6.0, 1e-5), rotate=True, superlink=None, budget=budget
        )
        second = (rotated.kit / "budget-token").read_text().strip()
        assert second != first and _reads_own_budget(url, second) and not _reads_own_budget(url, first)

        revoked = revoke_institution(fed, "St Mary", superlink=None, budget=budget)
        assert revoked.record.budget == "revoked"
        assert not _reads_own_budget(url, second)
        with BudgetAdmin(url, fed.admin_token()) as admin:
            assert admin.budgets()["St Mary"].epsilon_limit == pytest.approx(6.0)  # the record stays


def test_a_request_registration_gets_its_token_sealed_and_only_its_site_opens_it(tmp_path: Path) -> None:
    from fedcare.registration_request import read_request
    from fedcare.site import install_kit, join_site

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    fed = init_federation(tmp_path / "fed", budget_url=url)
    budget = BudgetTarget(url, fed.admin_token())
    site, _ = join_site(tmp_path / "st-mary", "St Mary")
    request = read_request(site.request)  # what the coordinator receives
    report = register_institution(fed, KitOptions("St Mary", 6.0, 1e-5), request=request, superlink=None, budget=budget)
    assert report.record.budget == "pending"
    assert "no budget token in the kit yet" in " ".join(install_kit(report.kit, site.root).notes)

    with running_budget_service(
        database_url=f"sqlite:///{tmp_path / 'ledger.db'}", admin_token=fed.admin_token(), port=port
    ):
        (synced,) = sync(fed, superlink=None, budget=budget)
        assert synced.record.budget == "registered"
        assert not (synced.kit / "budget-token").exists()  # the coordinator keeps only the sealed form
        sealed = (synced.kit / "budget-token.sealed").read_bytes()
        install_kit(synced.kit, site.root)
        token = (site.root / "budget-token").read_text().strip()
        assert token.encode() not in sealed and _reads_own_budget(url, token)
