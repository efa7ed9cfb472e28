"""Every route and its errors (401, 403, 404, 409, 422), on SQLite and on a real PostgreSQL server."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from tests.server.budget.helpers import ADMIN, aggregator_token, bearer, dp_event, register


def test_healthz_needs_no_token_and_names_the_database(client: TestClient, database_url: str) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json()["status"] == "ok"
    assert response.json()["database"] == database_url.split(":")[0].split("+")[0]


def test_openapi_documents_every_route(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    for path in (
        "/v1/institutions",
        "/v1/institutions/{institution_id}",
        "/v1/institutions/{institution_id}/budget",
        "/v1/institutions/{institution_id}/events",
        "/v1/events",
        "/v1/budgets",
        "/v1/runs/{run_id}/budget",
        "/v1/aggregators",
        "/healthz",
        "/metrics",
        "/dashboard",
    ):
        assert path in paths, path


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/v1/institutions"),
        ("GET", "/v1/institutions"),
        ("GET", "/v1/institutions/1"),
        ("GET", "/v1/institutions/1/budget"),
        ("GET", "/v1/institutions/1/events"),
        ("POST", "/v1/events"),
        ("GET", "/v1/budgets"),
        ("GET", "/v1/runs/1/budget"),
        ("POST", "/v1/aggregators"),
        ("GET", "/metrics"),
        ("GET", "/dashboard"),
    ],
)
def test_every_protected_route_is_401_without_a_token(client: TestClient, method: str, path: str) -> None:
    response = client.request(method, path, json={})
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert "token" in response.json()["detail"]


def test_unknown_and_malformed_tokens_are_401(client: TestClient) -> None:
    assert client.get("/v1/budgets", headers=bearer("fcb_not-a-real-token")).status_code == 401
    assert client.get("/v1/budgets", headers={"Authorization": "Basic abc"}).status_code == 401


def test_register_returns_the_token_once_and_stores_only_its_hash(client: TestClient) -> None:
    created = register(client, "hospital-1", epsilon_limit=8.0, delta=1e-5)
    assert created["token"].startswith("fcb_") and len(created["token"]) > 40
    assert created["epsilon_limit"] == 8.0 and created["delta"] == 1e-5 and created["created_at"]
    listed = client.get("/v1/institutions", headers=ADMIN).json()
    assert [i["name"] for i in listed] == ["hospital-1"] and "token" not in listed[0]
    engine = client.app.state.engine
    with engine.connect() as conn:
        stored = [row[0] for row in conn.exec_driver_sql("SELECT token_hash FROM api_tokens")]
    assert created["token"] not in stored and len(stored[0]) == 64


def test_duplicate_institution_name_is_409(client: TestClient) -> None:
    register(client, "hospital-1")
    response = client.post(
        "/v1/institutions", json={"name": "hospital-1", "epsilon_limit": 1, "delta": 1e-5}, headers=ADMIN
    )
    assert response.status_code == 409
    assert "already exists" in response.json()["detail"]


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ({"name": "h", "epsilon_limit": -1, "delta": 1e-5}, "epsilon_limit: Input should be greater than 0"),
        ({"name": "h", "epsilon_limit": 1, "delta": 1.0}, "delta: Input should be less than 1"),
        ({"name": "h", "epsilon_limit": 1, "delta": 0}, "delta: Input should be greater than 0"),
        ({"name": "", "epsilon_limit": 1, "delta": 1e-5}, "name: String should have at least 1 character"),
        ({"name": "h", "epsilon_limit": 1}, "delta: Field required"),
        ({"name": "h", "epsilon_limit": 1, "delta": 1e-5, "colour": "red"}, "colour: Extra inputs are not permitted"),
    ],
)
def test_bad_institution_payloads_are_422_saying_what_is_wrong(client: TestClient, payload: dict, message: str) -> None:
    response = client.post("/v1/institutions", json=payload, headers=ADMIN)
    assert response.status_code == 422
    assert message in response.json()["detail"]


def test_only_the_admin_registers_and_lists(client: TestClient) -> None:
    token = register(client, "hospital-1")["token"]
    agg = aggregator_token(client)
    for who in (bearer(token), bearer(agg)):
        assert (
            client.post(
                "/v1/institutions", json={"name": "x", "epsilon_limit": 1, "delta": 1e-5}, headers=who
            ).status_code
            == 403
        )
        assert client.get("/v1/institutions", headers=who).status_code == 403
        assert client.post("/v1/aggregators", json={"name": "y"}, headers=who).status_code == 403


def test_institution_reads_itself_but_not_another(client: TestClient) -> None:
    one, two = register(client, "hospital-1"), register(client, "hospital-2")
    mine = bearer(one["token"])
    assert client.get(f"/v1/institutions/{one['id']}", headers=mine).json()["name"] == "hospital-1"
    assert client.get(f"/v1/institutions/{one['id']}/budget", headers=mine).status_code == 200
    assert client.get(f"/v1/institutions/{one['id']}/events", headers=mine).status_code == 200
    for path in (
        f"/v1/institutions/{two['id']}",
        f"/v1/institutions/{two['id']}/budget",
        f"/v1/institutions/{two['id']}/events",
        "/v1/institutions/999/budget",
    ):
        response = client.get(path, headers=mine)
        assert response.status_code == 403, path
        assert "only its own" in response.json()["detail"]
    assert [b["institution"] for b in client.get("/v1/budgets", headers=mine).json()] == ["hospital-1"]


@pytest.mark.parametrize("suffix", ["", "/budget", "/events"])
def test_unknown_institution_id_is_404(client: TestClient, suffix: str) -> None:
    response = client.get(f"/v1/institutions/999{suffix}", headers=ADMIN)
    assert response.status_code == 404
    assert "999" in response.json()["detail"]


def test_budget_of_a_new_institution(client: TestClient) -> None:
    created = register(client, "hospital-1", epsilon_limit=4.0, delta=1e-6)
    budget = client.get(f"/v1/institutions/{created['id']}/budget", headers=ADMIN).json()
    assert (budget["epsilon_spent"], budget["epsilon_limit"], budget["epsilon_remaining"]) == (0.0, 4.0, 4.0)
    assert (budget["delta"], budget["rounds"], budget["last_event_at"]) == (1e-6, 0, None)
    assert budget["can_cover_next_round"] is True


def test_events_update_the_budget_and_the_ledger(client: TestClient) -> None:
    created = register(client, "hospital-1", epsilon_limit=4.0)
    agg = bearer(aggregator_token(client))
    written = client.post(
        "/v1/events", json=[dp_event("hospital-1", r, epsilon=1.0 * r) for r in (1, 2, 3)], headers=agg
    )
    assert written.status_code == 200, written.text
    assert (written.json()["created"], written.json()["duplicates"], written.json()["conflicts"]) == (3, 0, 0)
    budget = client.get(f"/v1/institutions/{created['id']}/budget", headers=agg).json()
    assert budget["rounds"] == 3 and budget["last_event_at"] is not None
    assert budget["epsilon_spent"] == pytest.approx(max(3.0, budget["epsilon_recomputed"]))
    assert budget["epsilon_remaining"] == pytest.approx(max(0.0, 4.0 - budget["epsilon_spent"]))
    assert budget["epsilon_next_round"] > budget["epsilon_spent"]
    ledger = client.get(f"/v1/institutions/{created['id']}/events", headers=agg).json()
    assert ledger["total"] == 3 and [e["server_round"] for e in ledger["items"]] == [1, 2, 3]
    assert all(e["epsilon_recomputed"] > 0 for e in ledger["items"])


def test_a_single_event_object_is_accepted_too(client: TestClient) -> None:
    register(client, "hospital-1")
    response = client.post("/v1/events", json=dp_event("hospital-1"), headers=ADMIN)
    assert response.status_code == 200 and response.json()["created"] == 1


def test_ledger_is_paginated(client: TestClient) -> None:
    created = register(client, "hospital-1")
    client.post("/v1/events", json=[dp_event("hospital-1", r) for r in range(1, 8)], headers=ADMIN)
    path = f"/v1/institutions/{created['id']}/events"
    first = client.get(path, params={"limit": 3}, headers=ADMIN).json()
    assert (
        [e["server_round"] for e in first["items"]] == [1, 2, 3] and first["next_offset"] == 3 and first["total"] == 7
    )
    last = client.get(path, params={"limit": 3, "offset": 6}, headers=ADMIN).json()
    assert [e["server_round"] for e in last["items"]] == [7] and last["next_offset"] is None
    assert client.get(path, params={"limit": 0}, headers=ADMIN).status_code == 422
    assert client.get(path, params={"offset": -1}, headers=ADMIN).status_code == 422


def test_only_aggregators_and_the_admin_post_events(client: TestClient) -> None:
    token = register(client, "hospital-1")["token"]
    response = client.post("/v1/events", json=dp_event("hospital-1"), headers=bearer(token))
    assert response.status_code == 403
    assert "aggregator" in response.json()["detail"]


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"epsilon": -0.5}, "events[0].epsilon: Input should be greater than or equal to 0"),
        ({"delta": 1.0}, "events[0].delta: Input should be less than 1"),
        ({"delta": 0.0}, "events[0].delta: Input should be greater than 0"),
        ({"noise_multiplier": 0}, "events[0].noise_multiplier: Input should be greater than 0"),
        ({"sample_rate": 1.5}, "events[0].sample_rate: Input should be less than or equal to 1"),
        ({"steps": 0}, "events[0].steps: Input should be greater than or equal to 1"),
        ({"accountant": "gdp"}, "events[0].accountant: Input should be 'rdp' or 'prv'"),
        ({"server_round": 0}, "events[0].server_round: Input should be greater than or equal to 1"),
        ({"institution": "nowhere"}, "unknown institution: events[0].institution 'nowhere'"),
    ],
)
def test_bad_events_are_422_saying_what_is_wrong_and_nothing_is_stored(
    client: TestClient, override: dict, message: str
) -> None:
    created = register(client, "hospital-1")
    good = dp_event("hospital-1", 1)
    response = client.post("/v1/events", json=[dp_event("hospital-1", 2) | override, good], headers=ADMIN)
    assert response.status_code == 422
    assert message in response.json()["detail"]
    assert client.get(f"/v1/institutions/{created['id']}/events", headers=ADMIN).json()["total"] == 0


def test_empty_and_oversized_batches_are_422(client: TestClient) -> None:
    register(client, "hospital-1")
    assert client.post("/v1/events", json=[], headers=ADMIN).status_code == 422
    big = [dp_event("hospital-1", r) for r in range(1, 1002)]
    assert client.post("/v1/events", json=big, headers=ADMIN).status_code == 422


def test_retries_neither_duplicate_nor_change_an_event(client: TestClient) -> None:
    created = register(client, "hospital-1")
    first = client.post("/v1/events", json=dp_event("hospital-1", 1, epsilon=3.0), headers=ADMIN).json()
    same = client.post("/v1/events", json=dp_event("hospital-1", 1, epsilon=3.0), headers=ADMIN).json()
    other = client.post("/v1/events", json=dp_event("hospital-1", 1, epsilon=0.1, steps=1), headers=ADMIN).json()
    assert (same["created"], same["duplicates"], same["results"][0]["outcome"]) == (0, 1, "duplicate")
    assert (other["created"], other["conflicts"], other["results"][0]["outcome"]) == (0, 1, "conflict")
    stored = first["results"][0]["event"]
    assert same["results"][0]["event"] == stored and other["results"][0]["event"] == stored
    ledger = client.get(f"/v1/institutions/{created['id']}/events", headers=ADMIN).json()
    assert ledger["total"] == 1 and ledger["items"][0] == stored
    budget = client.get(f"/v1/institutions/{created['id']}/budget", headers=ADMIN).json()
    assert budget["rounds"] == 1 and budget["epsilon_spent"] == pytest.approx(max(3.0, stored["epsilon_recomputed"]))
    # The same (run, round) of another institution, or another run, is a different event.
    register(client, "hospital-2")
    more = client.post(
        "/v1/events", json=[dp_event("hospital-2", 1), dp_event("hospital-1", 1, run_id="2")], headers=ADMIN
    ).json()
    assert more["created"] == 2


def test_under_reported_epsilon_is_flagged_and_never_under_counted(client: TestClient) -> None:
    created = register(client, "hospital-1")
    honest = client.post("/v1/events", json=dp_event("hospital-1", 1, epsilon=1000.0), headers=ADMIN).json()
    recomputed_1 = honest["results"][0]["event"]["epsilon_recomputed"]
    assert honest["results"][0]["event"]["flagged"] is False
    liar = client.post("/v1/events", json=dp_event("hospital-1", 2, epsilon=0.01), headers=ADMIN).json()
    event = liar["results"][0]["event"]
    assert event["flagged"] is True and "under-reported" in event["flag_reason"]
    assert event["epsilon_recomputed"] > recomputed_1
    budget = client.get(f"/v1/institutions/{created['id']}/budget", headers=ADMIN).json()
    assert budget["flagged_events"] == 1
    assert budget["epsilon_spent"] == pytest.approx(1000.0)  # max(recomputed, highest reported)


def test_delta_mismatch_is_flagged(client: TestClient) -> None:
    register(client, "hospital-1", delta=1e-6)
    event = client.post("/v1/events", json=dp_event("hospital-1", 1, delta=1e-3), headers=ADMIN).json()
    assert "delta mismatch" in event["results"][0]["event"]["flag_reason"]


def test_budget_says_when_the_next_round_cannot_be_covered(client: TestClient) -> None:
    created = register(client, "hospital-1", epsilon_limit=3.5)
    client.post("/v1/events", json=dp_event("hospital-1", 1, epsilon=2.9702037175605582), headers=ADMIN)
    budget = client.get(f"/v1/institutions/{created['id']}/budget", headers=ADMIN).json()
    assert budget["epsilon_spent"] < 3.5 and budget["epsilon_remaining"] > 0
    assert budget["epsilon_next_round"] > 3.5 and budget["can_cover_next_round"] is False


def test_run_budget_per_institution(client: TestClient) -> None:
    register(client, "hospital-1")
    two = register(client, "hospital-2")
    client.post("/v1/events", json=[dp_event("hospital-1", 1, run_id="100", epsilon=1.0)], headers=ADMIN)
    client.post(
        "/v1/events",
        json=[dp_event(h, r, run_id="200", epsilon=1.0) for r in (1, 2) for h in ("hospital-1", "hospital-2")],
        headers=ADMIN,
    )
    run = client.get("/v1/runs/200/budget", headers=ADMIN).json()
    assert run["run_id"] == "200"
    one, other = run["institutions"]
    assert (one["institution"], one["rounds"], one["first_round"], one["last_round"]) == ("hospital-1", 2, 1, 2)
    assert one["epsilon_before"] > 0 and other["epsilon_before"] == 0
    assert one["epsilon_spent_in_run"] == pytest.approx(one["epsilon_after"] - one["epsilon_before"])
    mine = client.get("/v1/runs/200/budget", headers=bearer(two["token"])).json()
    assert [i["institution"] for i in mine["institutions"]] == ["hospital-2"]
    missing = client.get("/v1/runs/999/budget", headers=ADMIN)
    assert missing.status_code == 404 and "999" in missing.json()["detail"]


def test_aggregator_reads_every_budget_and_metrics(client: TestClient) -> None:
    register(client, "hospital-1")
    register(client, "hospital-2")
    agg = bearer(aggregator_token(client))
    client.post("/v1/events", json=dp_event("hospital-1"), headers=agg)
    budgets = client.get("/v1/budgets", headers=agg).json()
    assert [b["institution"] for b in budgets] == ["hospital-1", "hospital-2"]
    metrics = client.get("/metrics", headers=agg)
    assert metrics.status_code == 200
    text = metrics.text
    assert 'fedcare_budget_epsilon_spent{institution="hospital-1"}' in text
    assert 'fedcare_budget_epsilon_limit{institution="hospital-2"} 10.0' in text
    assert 'fedcare_budget_events_stored_total{institution="hospital-1"} 1.0' in text
    assert 'fedcare_budget_event_writes_total{outcome="created"} 1.0' in text
    assert (
        'fedcare_budget_request_duration_seconds_bucket{le="0.02",method="POST",route="/v1/events",status="200"}'
        in text
    )


def test_metrics_are_not_for_institutions(client: TestClient) -> None:
    token = register(client, "hospital-1")["token"]
    assert client.get("/metrics", headers=bearer(token)).status_code == 403


def test_dashboard_takes_a_bearer_header_and_an_institution_sees_only_itself(client: TestClient) -> None:
    created = register(client, "hospital-1")
    register(client, "hospital-2")
    client.post("/v1/events", json=[dp_event("hospital-1", r) for r in (1, 2)], headers=ADMIN)
    page = client.get("/dashboard", headers=bearer(created["token"]))
    assert page.status_code == 200 and "<svg" in page.text and '"hospital-1"' in page.text
    assert '"hospital-2"' not in page.text and "set-cookie" not in page.headers  # sessions come from sign-in only
    assert "script-src 'nonce-" in page.headers["content-security-policy"]
    data = client.get("/dashboard/data", headers=bearer(created["token"])).json()
    assert [i["name"] for i in data["institutions"]] == ["hospital-1"]
    assert [p[0] for p in data["institutions"][0]["points"]] == [1, 2]
    assert client.get("/dashboard", headers=bearer("fcb_wrong")).status_code == 401


def test_budgets_of_one_institution_by_name(client: TestClient) -> None:
    mine = register(client, "hospital-1")["token"]
    register(client, "hospital-2")
    assert [b["institution"] for b in client.get("/v1/budgets?institution=hospital-2", headers=ADMIN).json()] == [
        "hospital-2"
    ]
    assert client.get("/v1/budgets?institution=nowhere", headers=ADMIN).status_code == 404
    own = client.get("/v1/budgets?institution=hospital-1", headers=bearer(mine))
    assert own.status_code == 200 and [b["institution"] for b in own.json()] == ["hospital-1"]
    for other in ("hospital-2", "nowhere"):  # the same 403 whether the other exists or not
        refused = client.get(f"/v1/budgets?institution={other}", headers=bearer(mine))
        assert refused.status_code == 403 and "only its own records" in refused.json()["detail"]
    assert client.get("/v1/institutions/2/budget", headers=bearer(mine)).status_code == 403


def test_group_commit_stores_each_batch_whole_or_not_at_all(client: TestClient) -> None:
    from server.budget import crud
    from server.budget.core.errors import UnknownInstitution
    from server.budget.schemas import EventCreate

    register(client, "hospital-1")
    batches = [
        [EventCreate(**dp_event("hospital-1", 1))],
        [EventCreate(**dp_event("hospital-1", 2)), EventCreate(**dp_event("nowhere", 2))],
        [EventCreate(**dp_event("hospital-1", 3)), EventCreate(**dp_event("hospital-1", 1))],
    ]
    first, refused, last = client.app.state.ledger.write_here(crud.record_batches, batches=batches)
    assert first.created == 1
    assert isinstance(refused, UnknownInstitution) and "'nowhere'" in str(refused)
    assert (last.created, last.duplicates) == (1, 1)
    ledger = client.get("/v1/institutions/1/events", headers=ADMIN).json()
    assert [e["server_round"] for e in ledger["items"]] == [1, 3]
    assert client.get("/v1/institutions/1/budget", headers=ADMIN).json()["rounds"] == 2
