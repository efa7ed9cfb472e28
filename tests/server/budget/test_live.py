"""The service as real uvicorn processes: restarts, concurrent writers, the CLI, the dashboard in Chromium."""

from __future__ import annotations

import subprocess
import threading
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from fedcare.budget_cli import budget_app
from server.budget.process import running_budget_service
from server.budget_client.admin import BudgetAdmin
from server.budget_client.connection import BudgetConnection
from server.budget_client.events import BudgetEventClient
from tests.server.budget.chromium import Chromium, headless_flags
from tests.server.budget.helpers import ADMIN_TOKEN, count_colour, decode_png, dp_event
from tests.support.local_postgres import LocalPostgres

pytestmark = pytest.mark.slow


def test_data_survives_a_restart_and_undelivered_events_are_sent_after_it(tmp_path: Path) -> None:
    database = f"sqlite:///{tmp_path / 'ledger.db'}"
    outbox = tmp_path / "outbox"
    with running_budget_service(database_url=database, admin_token=ADMIN_TOKEN) as url:
        admin = BudgetAdmin(url, ADMIN_TOKEN)
        hospital_token = admin.ensure_institution("hospital-1", 20.0, 1e-5).token
        aggregator_token = admin.create_aggregator_token("server-app")
        BudgetEventClient(url, aggregator_token, outbox_dir=outbox).post_events(
            [dp_event("hospital-1", r, epsilon=float(r)) for r in (1, 2)]
        )
        before = admin.budgets()["hospital-1"]
        ledger_before = admin.events(before.institution_id)["items"]

    # The service is down: the next round's event waits on disk.
    down = BudgetEventClient(url, aggregator_token, outbox_dir=outbox, timeout=1.0, retries=1, backoff=0.05)
    down.post_events([dp_event("hospital-1", 3, epsilon=3.0)])
    assert down.pending() == 1

    with running_budget_service(database_url=database, admin_token=ADMIN_TOKEN) as url:
        mine = BudgetConnection(url, hospital_token)  # tokens survive too
        assert mine.budgets()["hospital-1"] == before
        aggregator = BudgetEventClient(url, aggregator_token, outbox_dir=outbox)
        aggregator.post_events([dp_event("hospital-1", 4, epsilon=4.0)])
        assert aggregator.pending() == 0
        ledger = mine.events(before.institution_id)["items"]
        assert ledger[:2] == ledger_before
        assert [e["server_round"] for e in ledger] == [1, 2, 3, 4]


def _concurrent_writers(url: str, *, threads: int, rounds: int) -> None:
    admin = BudgetAdmin(url, ADMIN_TOKEN)
    names = [f"hospital-{i}" for i in range(1, 5)]
    for name in names:
        admin.ensure_institution(name, 1e6, 1e-5)
    token = admin.create_aggregator_token("writers")
    failures: list[BaseException] = []

    def writer(worker: int) -> None:
        try:
            with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=30) as http:
                for r in range(1, rounds + 1):
                    event = dp_event(names[worker % 4], r, run_id=f"run-{worker}")
                    for _ in range(2):  # every write is retried once: duplicates must not count
                        response = http.post("/v1/events", json=event)
                        assert response.status_code == 200, response.text
        except BaseException as exc:  # noqa: BLE001 - reported below
            failures.append(exc)

    pool = [threading.Thread(target=writer, args=(w,)) for w in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    assert not failures, failures
    budgets = admin.budgets()
    assert sum(b.rounds for b in budgets.values()) == threads * rounds
    for i, name in enumerate(names):
        writers_of_it = len([w for w in range(threads) if w % 4 == i])
        assert budgets[name].rounds == writers_of_it * rounds
        ledger = admin.events(budgets[name].institution_id, limit=1000)
        assert ledger["total"] == writers_of_it * rounds
        keys = {(e["run_id"], e["server_round"]) for e in ledger["items"]}
        assert len(keys) == ledger["total"]
        # Each event was assessed over exactly the events before it: spending only grows.
        spent = [e["epsilon_spent_after"] for e in ledger["items"]]
        assert spent == sorted(spent)


def test_concurrent_writers_lose_no_event_sqlite(tmp_path: Path) -> None:
    with running_budget_service(database_url=f"sqlite:///{tmp_path / 'ledger.db'}", admin_token=ADMIN_TOKEN) as url:
        _concurrent_writers(url, threads=8, rounds=12)


def test_concurrent_writers_lose_no_event_postgresql(postgres_server: LocalPostgres) -> None:
    database = postgres_server.create_database("budget_concurrency")
    with running_budget_service(database_url=database, admin_token=ADMIN_TOKEN) as url:
        _concurrent_writers(url, threads=8, rounds=12)


def test_budget_show_prints_a_table_from_the_api(live_service: str) -> None:
    admin = BudgetAdmin(live_service, ADMIN_TOKEN)
    admin.ensure_institution("hospital-1", 10.0, 1e-5)
    admin.ensure_institution("hospital-2", 10.0, 1e-5)
    BudgetEventClient(live_service, ADMIN_TOKEN).post_events(
        [dp_event("hospital-1", 1, epsilon=3.0), dp_event("hospital-2", 1, epsilon=3.0)]
    )
    runner = CliRunner(env={"COLUMNS": "200"})
    result = runner.invoke(budget_app, ["show", "--url", live_service, "--token", ADMIN_TOKEN])
    assert result.exit_code == 0, result.output
    assert "hospital-1" in result.output and "hospital-2" in result.output and "3.0000" in result.output
    one = runner.invoke(
        budget_app, ["show", "--url", live_service, "--token", ADMIN_TOKEN, "--institution", "hospital-2"]
    )
    assert one.exit_code == 0 and "hospital-1" not in one.output and "ledger events" in one.output
    unknown = runner.invoke(
        budget_app, ["show", "--url", live_service, "--token", ADMIN_TOKEN, "--institution", "nope"]
    )
    assert unknown.exit_code == 1 and "no institution named 'nope'" in unknown.output
    refused = runner.invoke(budget_app, ["show", "--url", live_service, "--token", "fcb_wrong"])
    assert refused.exit_code == 1 and "401" in refused.output


def _render(chromium: str, url: str, tmp_path: Path, name: str) -> tuple[Path, str]:
    shot = tmp_path / f"{name}.png"
    result = subprocess.run(
        [chromium, *headless_flags(tmp_path / f"{name}-profile"), f"--screenshot={shot}", url],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert shot.exists(), f"chromium wrote no screenshot (exit {result.returncode}): {result.stderr[-3000:]}"
    return shot, result.stderr


def _page_errors(log: str) -> list[str]:
    """Console messages (the page logs none), uncaught exceptions, CSP refusals, failed loads."""
    return [
        line
        for line in log.splitlines()
        if ":CONSOLE" in line or "Uncaught" in line or "Refused to" in line or "Failed to load resource" in line
    ]


def test_the_dashboard_plots_spending_in_headless_chromium(chromium: str, live_service: str, tmp_path: Path) -> None:
    # The check itself must see an error when there is one.
    broken = tmp_path / "broken.html"
    broken.write_text("<html><body><script>throw new Error('on purpose')</script></body></html>")
    _, log = _render(chromium, broken.as_uri(), tmp_path, "broken")
    assert any("on purpose" in line for line in _page_errors(log)), log[-2000:]

    admin = BudgetAdmin(live_service, ADMIN_TOKEN)
    for name, limit in (("hospital-1", 8.0), ("hospital-2", 12.0)):
        admin.ensure_institution(name, limit, 1e-5)
    BudgetEventClient(live_service, ADMIN_TOKEN).post_events(
        [dp_event(name, r, epsilon=0.0) for r in range(1, 9) for name in ("hospital-1", "hospital-2")]
    )

    browser = Chromium(chromium, tmp_path / "dashboard-profile", tmp_path / "dashboard.log")
    try:
        browser.open(f"{live_service}/dashboard")  # no session yet: the sign-in form
        assert browser.evaluate("location.pathname") == "/dashboard/login"
        browser.submit_form({"token": ADMIN_TOKEN})  # typed into the form, as a person does; never in a URL
        assert browser.evaluate("location.pathname + location.search") == "/dashboard"
        assert browser.evaluate("document.cookie") == ""  # HttpOnly: the page's scripts cannot read the session
        shot = browser.screenshot(tmp_path / "dashboard.png")
    finally:
        browser.close()
    log = (tmp_path / "dashboard.log").read_text(errors="replace")
    assert not _page_errors(log), _page_errors(log)
    width, height, rows = decode_png(shot.read_bytes())
    bpp = len(rows[0]) // width
    assert (width, height) == (1200, 800)
    assert len(set(rows)) > 100, "the screenshot is (nearly) blank"
    # The two series are drawn in their colours: blue (#1f77b4) and red (#d62728), lines and legend.
    assert count_colour(rows, (0x1F, 0x77, 0xB4), bpp=bpp) > 500
    assert count_colour(rows, (0xD6, 0x27, 0x28), bpp=bpp) > 500


def test_the_dashboard_without_a_token_is_401(live_service: str, tmp_path: Path) -> None:
    response = httpx.get(f"{live_service}/dashboard")
    assert response.status_code == 401 and "token" in response.json()["detail"]
    # This service serves plain HTTP because the fixture asked for it; it says so in its log.
    assert "INSECURE HTTP" in (tmp_path / "service.log").read_text()


def test_two_workers_share_the_ledger_and_sum_their_metrics(tmp_path: Path) -> None:
    database = f"sqlite:///{tmp_path / 'ledger.db'}"
    with running_budget_service(database_url=database, admin_token=ADMIN_TOKEN, workers=2) as url:
        admin = BudgetAdmin(url, ADMIN_TOKEN)
        admin.ensure_institution("hospital-1", 50.0, 1e-5)
        for r in range(1, 11):  # fresh connections: spread over both workers
            headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
            with httpx.Client(base_url=url, headers=headers, timeout=30) as http:  # a loaded machine is slow
                assert http.post("/v1/events", json=dp_event("hospital-1", r)).status_code == 200
        assert admin.budgets()["hospital-1"].rounds == 10
        metrics = httpx.get(f"{url}/metrics", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}).text
        assert 'fedcare_budget_event_writes_total{outcome="created"} 10.0' in metrics
        assert 'fedcare_budget_events_stored_total{institution="hospital-1"} 10.0' in metrics
