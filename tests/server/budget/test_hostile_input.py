"""Requests that made the service answer 500 (an OpenAPI fuzzer and our own fuzz found them), on SQLite and PostgreSQL.

Each is now a 422 that names the field, and nothing is stored.
"""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from server.budget import crud
from server.budget.core import accounting
from server.budget.core.errors import AccountingError, ValueOutOfRange
from server.budget.limits import MAX_ID
from server.budget.schemas import EventCreate
from tests.server.budget.helpers import ADMIN, dp_event, register


def _events(client: TestClient, institution_id: int) -> list[dict]:
    response = client.get(f"/v1/institutions/{institution_id}/events", headers=ADMIN)
    assert response.status_code == 200, response.text
    return response.json()["items"]


@pytest.mark.parametrize("offset", [2**63, 2**64, 10**30])
def test_a_huge_offset_is_422_naming_it(client: TestClient, offset: int) -> None:
    """Found by the fuzzer: an offset beyond int64 overflowed the database driver (HTTP 500)."""
    institution = register(client, "hospital-1")
    response = client.get(f"/v1/institutions/{institution['id']}/events", params={"offset": offset}, headers=ADMIN)
    assert response.status_code == 422, response.text
    assert response.json()["detail"].startswith("offset: ")


def test_the_largest_offset_is_an_empty_page(client: TestClient) -> None:
    institution = register(client, "hospital-1")
    assert client.post("/v1/events", json=dp_event("hospital-1"), headers=ADMIN).status_code == 200
    response = client.get(f"/v1/institutions/{institution['id']}/events", params={"offset": MAX_ID}, headers=ADMIN)
    assert response.status_code == 200, response.text
    assert response.json()["items"] == [] and response.json()["total"] == 1 and response.json()["next_offset"] is None


@pytest.mark.parametrize(
    ("path", "status"),
    [
        (f"/v1/institutions/{2**63}", 422),
        (f"/v1/institutions/{2**64}/budget", 422),
        (f"/v1/institutions/{-(2**70)}/events", 422),
        ("/v1/institutions/0", 422),
        (f"/v1/institutions/{MAX_ID}", 404),
        (f"/v1/institutions/{MAX_ID}/events", 404),
        ("/v1/runs/" + "9" * 65 + "/budget", 422),
        ("/v1/runs/a%00b/budget", 422),
    ],
)
def test_ids_beyond_what_the_database_stores_are_refused(client: TestClient, path: str, status: int) -> None:
    response = client.get(path, headers=ADMIN)
    assert response.status_code == status, response.text


@pytest.mark.parametrize("accountant", ["prv", "rdp"])
def test_subnormal_noise_and_delta_are_422_naming_both(client: TestClient, accountant: str) -> None:
    """Found by the fuzzer: noise_multiplier and delta of 5e-324 under prv divided by zero in Opacus (HTTP 500)."""
    institution = register(client, "hospital-1")
    event = dp_event("hospital-1", noise_multiplier=5e-324, delta=5e-324, accountant=accountant)
    response = client.post("/v1/events", json=event, headers=ADMIN)
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert "events[0].noise_multiplier: noise_multiplier must be at least 0.01" in detail
    assert "events[0].delta: delta must be at least 1e-30" in detail
    assert _events(client, institution["id"]) == []


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ({"noise_multiplier": 1e-3, "accountant": "prv"}, "noise_multiplier"),  # asked numpy for 670 GiB
        ({"noise_multiplier": 1e308}, "noise_multiplier"),  # OverflowError in Opacus
        ({"sample_rate": 5e-324}, "sample_rate"),
        ({"steps": 2**31}, "steps"),  # an INTEGER column on PostgreSQL
        ({"steps": 2**63}, "steps"),  # beyond SQLite's int64
        ({"server_round": 2**63}, "server_round"),
        ({"epsilon": 1e300}, "epsilon"),
        ({"run_id": "run\x00one"}, "run_id"),  # PostgreSQL refuses NUL in text
        ({"institution": "hospital\x001"}, "institution"),
    ],
)
def test_out_of_range_event_fields_are_422_naming_the_field(client: TestClient, override: dict, field: str) -> None:
    institution = register(client, "hospital-1")
    response = client.post("/v1/events", json=dp_event("hospital-1") | override, headers=ADMIN)
    assert response.status_code == 422, response.text
    assert response.json()["detail"].startswith(f"events[0].{field}: ")
    assert _events(client, institution["id"]) == []


def test_the_largest_accepted_round_and_steps_are_stored(client: TestClient) -> None:
    institution = register(client, "hospital-1")
    event = dp_event("hospital-1", server_round=2**31 - 1, steps=2**31 - 1, noise_multiplier=50.0, sample_rate=1e-6)
    response = client.post("/v1/events", json=event, headers=ADMIN)
    assert response.status_code == 200, response.text
    assert [(e["server_round"], e["steps"]) for e in _events(client, institution["id"])] == [(2**31 - 1, 2**31 - 1)]


def test_a_prv_history_too_large_to_compute_is_422_and_the_ledger_carries_on(client: TestClient) -> None:
    institution = register(client, "hospital-1")
    huge = dp_event("hospital-1", noise_multiplier=0.3, sample_rate=1.0, steps=100_000, accountant="prv")
    response = client.post("/v1/events", json=huge, headers=ADMIN)
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert "institution 'hospital-1'" in detail and "noise_multiplier=0.3" in detail and "steps=100000" in detail
    assert "grid points" in detail and "rdp accountant" in detail
    assert _events(client, institution["id"]) == []
    assert client.post("/v1/events", json=dp_event("hospital-1", 2), headers=ADMIN).status_code == 200


def test_an_accountant_failure_is_422_naming_the_event(client: TestClient) -> None:
    """PRV cannot state epsilon at a delta near 1 (Opacus raises RuntimeError): a 422, never a 500."""
    institution = register(client, "hospital-1", delta=0.999999)
    event = dp_event("hospital-1", accountant="prv", delta=0.999999, steps=1, noise_multiplier=5.0)
    response = client.post("/v1/events", json=event, headers=ADMIN)
    assert response.status_code == 422, response.text
    assert "the prv accountant failed" in response.json()["detail"]
    assert _events(client, institution["id"]) == []


@pytest.mark.parametrize(
    "body",
    [
        {"name": "x\x00y", "epsilon_limit": 1.0, "delta": 1e-5},
        {"name": "x", "epsilon_limit": 1e300, "delta": 1e-5},
        {"name": "x", "epsilon_limit": 1.0, "delta": 5e-324},
    ],
)
def test_out_of_range_institutions_are_422(client: TestClient, body: dict) -> None:
    assert client.post("/v1/institutions", json=body, headers=ADMIN).status_code == 422
    assert client.get("/v1/institutions", headers=ADMIN).json() == []


def test_aggregator_names_with_nul_are_422(client: TestClient) -> None:
    assert client.post("/v1/aggregators", json={"name": "server\x00app"}, headers=ADMIN).status_code == 422


def test_an_overlong_token_is_401(client: TestClient) -> None:
    response = client.get("/v1/budgets", headers={"Authorization": "Bearer " + "x" * 10_000})
    assert response.status_code == 401
    assert "at most 512" in response.json()["detail"]


def test_a_value_the_database_cannot_store_is_that_batchs_422(client: TestClient) -> None:
    """The last line of defence behind the limits: a DataError or OverflowError refuses one batch, not the group."""
    register(client, "hospital-1")
    good = EventCreate.model_validate(dp_event("hospital-1"))
    too_big = EventCreate.model_construct(**{**good.model_dump(), "server_round": 2**63})  # skips validation
    ledger = client.app.state.ledger
    refused, written = ledger.write_here(crud.record_batches, batches=[[too_big], [good]])
    assert isinstance(refused, ValueOutOfRange) and refused.status_code == 422
    assert written.created == 1


def test_accounting_refuses_instead_of_crashing() -> None:
    with pytest.raises(AccountingError, match="grid points"):
        accounting.cumulative_epsilon({(1e-3, 0.05): 40}, accountant="prv", delta=1e-5)
    with pytest.raises(AccountingError, match="rdp accountant failed"):
        accounting.cumulative_epsilon({(5e-324, 0.05): 40}, accountant="rdp", delta=1e-5)
