"""The ServerApp's event client: retries, the durable outbox, rejected events, and the reads it needs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from client.accountant_state import HospitalAccountant
from common.dp_event import DPEvent
from server.budget.process import free_port
from server.budget_client.admin import BudgetAdmin
from server.budget_client.connection import BudgetAuthError, BudgetRejected, BudgetServiceUnavailable, BudgetView
from server.budget_client.events import BudgetEventClient
from tests.server.budget.helpers import ADMIN_TOKEN, dp_event


def _budget_client(app_client: TestClient, outbox: Path, token: str = ADMIN_TOKEN) -> BudgetEventClient:
    return BudgetEventClient("http://testserver", token, outbox_dir=outbox, http=app_client, retries=1, backoff=0.01)


def _admin(app_client: TestClient) -> BudgetAdmin:
    return BudgetAdmin("http://testserver", ADMIN_TOKEN, http=app_client, retries=1, backoff=0.01)


def _unreachable(outbox: Path, token: str = ADMIN_TOKEN) -> BudgetEventClient:
    return BudgetEventClient(
        f"http://127.0.0.1:{free_port()}", token, outbox_dir=outbox, timeout=1.0, retries=1, backoff=0.01
    )


def test_aggregator_posts_events_and_reads_every_budget(app_client: TestClient, tmp_path: Path) -> None:
    admin = _admin(app_client)
    for name in ("hospital-1", "hospital-2"):
        admin.ensure_institution(name, 5.0, 1e-5)
    aggregator = _budget_client(app_client, tmp_path / "outbox", token=admin.create_aggregator_token("server-app"))
    aggregator.post_events([dp_event("hospital-1", 1, epsilon=3.0)])
    budgets = aggregator.budgets()
    assert set(budgets) == {"hospital-1", "hospital-2"}
    one = budgets["hospital-1"]
    assert isinstance(one, BudgetView) and one.rounds == 1 and one.epsilon_spent == pytest.approx(3.0)
    assert one.epsilon_remaining == pytest.approx(2.0) and one.epsilon_next_round > 3.0
    assert aggregator.run_budget(dp_event("x")["run_id"])["institutions"][0]["institution"] == "hospital-1"


def test_unreachable_service_keeps_events_on_disk_and_a_later_call_sends_them_first(
    app_client: TestClient, tmp_path: Path
) -> None:
    outbox = tmp_path / "outbox"
    _admin(app_client).ensure_institution("hospital-1", 50.0, 1e-5)
    down = _unreachable(outbox)
    down.post_events([dp_event("hospital-1", 1)])  # no exception: the ServerApp carries on
    down.post_events([dp_event("hospital-1", 2)])
    assert down.pending() == 2
    lines = (outbox / "outbox.jsonl").read_text().splitlines()
    assert [json.loads(line)["server_round"] for line in lines] == [1, 2]
    with pytest.raises(BudgetServiceUnavailable, match="no answer after 2 tries"):
        down.flush_outbox()

    up = _budget_client(app_client, outbox)
    up.post_events([dp_event("hospital-1", 3)])
    assert up.pending() == 0
    ledger = app_client.get("/v1/institutions/1/events", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}).json()
    assert [e["server_round"] for e in ledger["items"]] == [1, 2, 3]  # order kept, nothing dropped
    assert up.flush_outbox() == 0


def test_invalid_events_are_kept_aside_and_the_valid_ones_stored(app_client: TestClient, tmp_path: Path) -> None:
    outbox = tmp_path / "outbox"
    client = _budget_client(app_client, outbox)
    _admin(app_client).ensure_institution("hospital-1", 50.0, 1e-5)
    with pytest.raises(BudgetRejected, match="unknown institution") as caught:
        client.post_events([dp_event("hospital-1", 1), dp_event("hospital-9", 1), dp_event("hospital-1", 2)])
    assert caught.value.status_code == 422
    assert client.budgets()["hospital-1"].rounds == 2
    rejected = [json.loads(line) for line in (outbox / "rejected.jsonl").read_text().splitlines()]
    assert [r["institution"] for r in rejected] == ["hospital-9"] and "unknown institution" in rejected[0][
        "rejected_because"
    ]
    assert client.pending() == 0


def test_a_refused_token_keeps_the_events_and_says_so(app_client: TestClient, tmp_path: Path) -> None:
    outbox = tmp_path / "outbox"
    _admin(app_client).ensure_institution("hospital-1", 50.0, 1e-5)
    wrong = _budget_client(app_client, outbox, token="fcb_wrong")
    with pytest.raises(BudgetAuthError, match="401"):
        wrong.post_events([dp_event("hospital-1", 1)])
    assert wrong.pending() == 1
    _budget_client(app_client, outbox).flush_outbox()
    assert wrong.pending() == 0


def test_a_torn_outbox_line_is_set_aside_not_fatal(app_client: TestClient, tmp_path: Path) -> None:
    outbox = tmp_path / "outbox"
    client = _budget_client(app_client, outbox)
    _admin(app_client).ensure_institution("hospital-1", 50.0, 1e-5)
    outbox.mkdir(exist_ok=True)
    (outbox / "outbox.jsonl").write_text(json.dumps(dp_event("hospital-1", 1)) + '\n{"run_id": "1", "serv')
    assert client.flush_outbox() == 1
    assert "serv" in (outbox / "outbox.corrupt").read_text()


def test_events_as_hospitals_report_them_land_with_their_epsilon_unflagged(
    app_client: TestClient, tmp_path: Path
) -> None:
    """The ClientApp's own accountant, over two runs: the ledger agrees with every reported epsilon."""
    client = _budget_client(app_client, tmp_path / "outbox")
    _admin(app_client).ensure_institution("hospital-1", 100.0, 1e-5)
    accountant = HospitalAccountant.for_institution(tmp_path / "state", "hospital-1")
    reported = []
    for run_id, rounds in ((1795588208837835127, 3), (1795588238859563242, 2)):
        for server_round in range(1, rounds + 1):
            noise, q, steps = 1.1, 0.04, 25
            eps = accountant.projected_epsilon(
                noise_multiplier=noise, sample_rate=q, steps=steps, accountant="rdp", delta=1e-5
            )
            event = DPEvent(
                noise_multiplier=noise,
                sample_rate=q,
                steps=steps,
                accountant="rdp",
                epsilon=eps,
                delta=1e-5,
                run_id=run_id,
                server_round=server_round,
            )
            accountant.commit(event)
            client.post_events([event.for_ledger(institution="hospital-1")])
            reported.append(eps)
    ledger = client.events(1)["items"]
    assert [e["epsilon"] for e in ledger] == reported
    assert not any(e["flagged"] for e in ledger)
    assert [e["epsilon_recomputed"] for e in ledger] == pytest.approx(reported, rel=1e-9)
    assert client.budgets()["hospital-1"].epsilon_spent == pytest.approx(reported[-1], rel=1e-9)
    second_run = client.run_budget(1795588238859563242)["institutions"][0]
    assert second_run["epsilon_before"] == pytest.approx(reported[2]) and second_run["rounds"] == 2
