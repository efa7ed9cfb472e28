"""Rotating and revoking an institution's token (`fedcare institution register --rotate` / `revoke`)."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from server.budget_client.admin import BudgetAdmin
from server.budget_client.connection import BudgetAuthError, BudgetConnection
from tests.server.budget.helpers import ADMIN, aggregator_token, bearer, register


def test_revoked_tokens_are_401_and_the_ledger_stays(client: TestClient) -> None:
    hospital = register(client, "st-mary")
    url = f"/v1/institutions/{hospital['id']}/budget"
    assert client.get(url, headers=bearer(hospital["token"])).status_code == 200  # now in the token cache
    response = client.delete(f"/v1/institutions/{hospital['id']}/tokens", headers=ADMIN)
    assert response.status_code == 200, response.text
    assert response.json() == {"institution_id": hospital["id"], "institution": "st-mary", "revoked": 1}
    assert client.get(url, headers=bearer(hospital["token"])).status_code == 401
    assert client.get(url, headers=ADMIN).json()["institution"] == "st-mary"  # the record is kept
    again = client.delete(f"/v1/institutions/{hospital['id']}/tokens", headers=ADMIN)
    assert again.json()["revoked"] == 0


def test_rotation_issues_a_working_token_and_disables_the_old_one(client: TestClient) -> None:
    hospital = register(client, "st-mary")
    other = register(client, "st-luke")
    response = client.post(f"/v1/institutions/{hospital['id']}/token", headers=ADMIN)
    assert response.status_code == 201, response.text
    token = response.json()["token"]
    assert token != hospital["token"]
    url = f"/v1/institutions/{hospital['id']}/budget"
    assert client.get(url, headers=bearer(token)).status_code == 200
    assert client.get(url, headers=bearer(hospital["token"])).status_code == 401
    assert client.get(f"/v1/institutions/{other['id']}/budget", headers=bearer(other["token"])).status_code == 200


def test_only_the_admin_rotates_or_revokes(client: TestClient) -> None:
    hospital = register(client, "st-mary")
    for token in (hospital["token"], aggregator_token(client)):
        assert client.post(f"/v1/institutions/{hospital['id']}/token", headers=bearer(token)).status_code == 403
        assert client.delete(f"/v1/institutions/{hospital['id']}/tokens", headers=bearer(token)).status_code == 403
    assert client.delete("/v1/institutions/999/tokens", headers=ADMIN).status_code == 404


def test_budget_client_finds_rotates_and_revokes(client: TestClient) -> None:
    hospital = register(client, "st-mary")
    admin = BudgetAdmin("http://testserver", ADMIN["Authorization"].split()[1], http=client, retries=0)
    found = admin.find_institution("st-mary")
    assert found is not None and found.id == hospital["id"]
    assert admin.find_institution("nobody") is None
    token = admin.rotate_institution_token(hospital["id"])
    assert admin.revoke_institution_tokens(hospital["id"]) == 1
    revoked = BudgetConnection("http://testserver", token, http=client, retries=0)  # the test client gets its header
    with pytest.raises(BudgetAuthError) as refused:
        revoked.budgets()
    assert refused.value.status_code == 401
