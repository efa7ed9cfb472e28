"""A hospital reads its budget over real TLS: uvicorn serving a certificate from the federation's own CA.

One service for every assertion (it is the slow part): the hospital's own budget and events through
`fedcare budget show --kit`, 403 for another's, and each failure as one line; the dashboard's session
cookie as the real server sends it.
"""

from __future__ import annotations

import re
import shutil
from http.cookies import SimpleCookie
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from common.tls import make_server_tls
from fedcare.budget_cli import budget_app
from fedcare.demo_sites import join_and_register
from fedcare.federation_dir import init_federation
from fedcare.registration import budget_target
from server.budget.process import free_port, running_budget_service
from server.budget_client.connection import BudgetConnection, tls_context
from tests.server.budget.helpers import dp_event

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("wide_budget_consoles")]  # failures count as one line


def _show(*args: str) -> tuple[int, str]:
    result = CliRunner(env={"COLUMNS": "400"}).invoke(budget_app, ["show", *args])
    assert "Traceback" not in result.output
    return result.exit_code, result.output


def test_a_hospital_reads_its_own_budget_over_tls_and_not_another(tmp_path: Path) -> None:
    port = free_port()
    fed = init_federation(tmp_path / "fed", control_address="127.0.0.1:9", budget_url=f"https://127.0.0.1:{port}")
    with running_budget_service(
        database_url=f"sqlite:///{tmp_path / 'ledger.db'}",
        admin_token=fed.admin_token(),
        port=port,
        tls=fed.budget_tls(),
        log_path=tmp_path / "service.log",
    ) as url:
        assert url.startswith("https://")
        # The coordinator registers both hospitals over TLS too (its admin client trusts the same CA).
        sites = join_and_register(fed, tmp_path / "sites", ["St Mary", "Royal"], budget=budget_target(fed))
        mary = sites["St Mary"].root
        # The first write waits for the service to load Opacus: seconds, more on a busy machine.
        with BudgetConnection(url, fed.admin_token(), ca_certificate=fed.ca_certificate, timeout=120) as admin:
            admin.request("POST", "/v1/events", json=[dp_event("St Mary", r, epsilon=0.5 * r) for r in (1, 2, 3)])

        code, out = _show("--kit", str(mary))
        assert code == 0, out
        assert "St Mary: epsilon spent" in out and "of 10.00" in out and "remaining" in out
        assert "last 3 of 3 ledger events" in out and "Royal" not in out

        code, out = _show("--kit", str(mary), "--institution", "Royal")
        assert code == 1 and "refused (403): an institution may read only its own records" in out
        assert len(out.strip().splitlines()) == 1

        stranger = tmp_path / "stranger"  # a kit that trusts another CA: the service is not the federation's
        shutil.copytree(mary, stranger)
        shutil.copyfile(make_server_tls(tmp_path / "other-ca").ca_certificate, stranger / "ca.crt")
        code, out = _show("--kit", str(stranger))
        assert code == 1 and "TLS with" in out and f"signed by the CA in {stranger / 'ca.crt'}" in out

        code, out = _show("--kit", str(mary), "--url", url.replace("https://", "http://"))
        assert code == 1 and len(out.strip().splitlines()) == 1  # plain HTTP to a TLS port: refused, one line

        (stranger / "budget-token").write_text("fcb_" + "x" * 43)  # a rotated-away token
        shutil.copyfile(fed.ca_certificate, stranger / "ca.crt")
        code, out = _show("--kit", str(stranger))
        assert code == 1 and "did not accept" in out and "401" in out and "fedcare institution install" in out

        with httpx.Client(base_url=url, verify=tls_context(fed.ca_certificate)) as browser:
            form = browser.get("/dashboard/login")
            csrf = re.search(r'name="csrf" value="([^"]+)"', form.text).group(1)
            token = (mary / "budget-token").read_text().strip()
            assert browser.post("/dashboard/login", data={"token": "fcb_wrong", "csrf": csrf}).status_code == 401
            signed_in = browser.post("/dashboard/login", data={"token": token, "csrf": csrf})
            assert signed_in.status_code == 303
            (header,) = [h for h in signed_in.headers.get_list("set-cookie") if h.startswith("__Host-fedcare-session=")]
            session = SimpleCookie(header)["__Host-fedcare-session"]
            assert session["httponly"] and session["secure"] and session["samesite"].lower() == "strict"
            data = browser.get("/dashboard/data").json()
            assert [i["name"] for i in data["institutions"]] == ["St Mary"]
    log = (tmp_path / "service.log").read_text()
    assert token not in log and fed.admin_token() not in log and "INSECURE" not in log
