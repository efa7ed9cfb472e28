"""The admin SDK: registering an institution is idempotent."""

from __future__ import annotations

from fastapi.testclient import TestClient

from server.budget_client.admin import BudgetAdmin
from tests.server.budget.helpers import ADMIN_TOKEN


def test_ensure_institution_creates_once_then_returns_the_existing(app_client: TestClient) -> None:
    client = BudgetAdmin("http://testserver", ADMIN_TOKEN, http=app_client, retries=1, backoff=0.01)
    created = client.ensure_institution("hospital-1", 5.0, 1e-5)
    assert created.token and created.token.startswith("fcb_")
    again = client.ensure_institution("hospital-1", 5.0, 1e-5)
    assert (again.id, again.name, again.token) == (created.id, "hospital-1", None)
