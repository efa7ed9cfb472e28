"""Signing in to the dashboard with a form: session cookies, what each login sees, CSRF, no token in any URL."""

from __future__ import annotations

import re
from collections.abc import Iterator
from http.cookies import SimpleCookie

import pytest
from fastapi.testclient import TestClient

from server.budget.core.config import BudgetSettings
from server.budget.main import create_app
from tests.server.budget.helpers import ADMIN, ADMIN_TOKEN, dp_event, register

SESSION = "__Host-fedcare-session"


@pytest.fixture
def browser(settings: BudgetSettings) -> Iterator[TestClient]:
    """A client that keeps cookies like a browser, over https (it sends Secure cookies only there)."""
    app = create_app(settings)
    with TestClient(app, base_url="https://testserver", follow_redirects=False) as client:
        yield client
    app.state.engine.dispose()


def _csrf(html: str) -> str:
    return re.search(r'name="csrf" value="([^"]+)"', html).group(1)


def sign_in(client: TestClient, token: str):
    form = client.get("/dashboard/login")
    assert form.status_code == 200
    return client.post("/dashboard/login", data={"token": token, "csrf": _csrf(form.text)})


def _set_cookies(response) -> dict[str, SimpleCookie]:
    out = {}
    for header in response.headers.get_list("set-cookie"):
        cookie = SimpleCookie()
        cookie.load(header)
        out.update({name: morsel for name, morsel in cookie.items()})
    return out


def test_a_sign_in_sets_an_httponly_secure_strict_session_cookie(browser: TestClient) -> None:
    response = sign_in(browser, ADMIN_TOKEN)
    assert response.status_code == 303 and response.headers["location"] == "/dashboard"
    session = _set_cookies(response)[SESSION]
    assert session["httponly"] and session["secure"] and session["samesite"].lower() == "strict"
    assert session["path"] == "/" and not session["domain"]  # __Host-: this host only
    assert ADMIN_TOKEN not in response.headers.get("set-cookie", "")  # the cookie is a session id, not the token
    page = browser.get("/dashboard")
    assert page.status_code == 200 and "<svg" in page.text and "Sign out" in page.text
    assert "form-action 'self'" in page.headers["content-security-policy"]


def test_a_hospital_sees_only_its_own_institution_and_the_admin_sees_all(
    browser: TestClient, settings: BudgetSettings
) -> None:
    mine = register(browser, "hospital-1")["token"]
    register(browser, "hospital-2")
    browser.post(
        "/v1/events", json=[dp_event(h, r) for h in ("hospital-1", "hospital-2") for r in (1, 2)], headers=ADMIN
    )
    assert sign_in(browser, mine).status_code == 303
    data = browser.get("/dashboard/data").json()
    assert [i["name"] for i in data["institutions"]] == ["hospital-1"]
    assert data["viewer"] == "institution" and data["viewer_name"] == "hospital-1"
    assert [p[0] for p in data["institutions"][0]["points"]] == [1, 2]
    assert '"hospital-2"' not in browser.get("/dashboard").text
    browser.cookies.clear()
    assert sign_in(browser, ADMIN_TOKEN).status_code == 303
    assert [i["name"] for i in browser.get("/dashboard/data").json()["institutions"]] == ["hospital-1", "hospital-2"]


@pytest.mark.parametrize("token", ["fcb_wrong", "", "x" * 600, "  ", ADMIN_TOKEN[:-1]])
def test_a_wrong_token_gets_401_and_the_form_again(browser: TestClient, token: str) -> None:
    response = sign_in(browser, token)
    assert response.status_code == 401 and "not accepted" in response.text and 'name="csrf"' in response.text
    assert SESSION not in _set_cookies(response)
    assert browser.get("/dashboard/data").status_code == 401


def test_the_sign_in_form_needs_its_csrf_token_and_this_origin(browser: TestClient) -> None:
    csrf = _csrf(browser.get("/dashboard/login").text)
    assert browser.post("/dashboard/login", data={"token": ADMIN_TOKEN}).status_code == 403
    assert browser.post("/dashboard/login", data={"token": ADMIN_TOKEN, "csrf": "forged" * 8}).status_code == 403
    elsewhere = {"origin": "https://evil.example"}
    assert (
        browser.post("/dashboard/login", data={"token": ADMIN_TOKEN, "csrf": csrf}, headers=elsewhere).status_code
        == 403
    )
    browser.cookies.clear()  # a cross-site post carries no SameSite=Strict cookie: same refusal
    assert browser.post("/dashboard/login", data={"token": ADMIN_TOKEN, "csrf": csrf}).status_code == 403
    assert browser.post("/dashboard/login", json={"token": ADMIN_TOKEN}).status_code == 415


def test_an_old_token_url_is_sent_to_sign_in_without_using_the_token(browser: TestClient) -> None:
    for path in ("/dashboard", "/dashboard/data"):
        response = browser.get(path, params={"token": ADMIN_TOKEN})
        assert response.status_code == 303 and response.headers["location"] == "/dashboard/login", path
        assert ADMIN_TOKEN not in response.headers["location"] and not response.headers.get_list("set-cookie")
    assert browser.get("/dashboard/data").status_code == 401  # nothing was signed in by it


def test_no_url_the_dashboard_emits_holds_a_token(browser: TestClient) -> None:
    token = register(browser, "hospital-1")["token"]
    seen = []
    form = browser.get("/dashboard/login")
    signed_in = browser.post("/dashboard/login", data={"token": token, "csrf": _csrf(form.text)})
    page = browser.get("/dashboard")
    signed_out = browser.post("/dashboard/logout", data={"csrf": _csrf(page.text)})
    for response in (form, signed_in, page, signed_out, browser.get("/dashboard", headers={"accept": "text/html"})):
        seen.append(response.headers.get("location", ""))
        seen += re.findall(r'(?:href|action|src)="([^"]*)"', response.text)
        seen += re.findall(r"""(?:fetch|location|replaceState)\(([^)]*)\)""", response.text)
    assert seen and all("token" not in url.lower() and ADMIN_TOKEN not in url and token not in url for url in seen)
    assert {"/dashboard/login", "/dashboard", "/dashboard/logout"} <= set(seen)


def test_sign_out_ends_the_session_even_for_a_copied_cookie(browser: TestClient) -> None:
    sign_in(browser, ADMIN_TOKEN)
    copied = browser.cookies.get(SESSION)
    page = browser.get("/dashboard")
    assert browser.post("/dashboard/logout", data={"csrf": "forged"}).status_code == 403  # CSRF: the session stays
    assert browser.get("/dashboard/data").status_code == 200
    out = browser.post("/dashboard/logout", data={"csrf": _csrf(page.text)})
    assert out.status_code == 303 and out.headers["location"] == "/dashboard/login"
    assert _set_cookies(out)[SESSION]["max-age"] == "0"
    browser.cookies.set(SESSION, copied, domain="testserver", path="/")
    assert browser.get("/dashboard/data").status_code == 401


def test_revoking_the_token_ends_its_sessions(browser: TestClient) -> None:
    created = register(browser, "hospital-1")
    sign_in(browser, created["token"])
    assert browser.get("/dashboard/data").status_code == 200
    assert browser.delete(f"/v1/institutions/{created['id']}/tokens", headers=ADMIN).status_code == 200
    assert browser.get("/dashboard/data").status_code == 401


def test_a_browser_without_a_session_is_sent_to_sign_in(browser: TestClient) -> None:
    response = browser.get("/dashboard", headers={"accept": "text/html,application/xhtml+xml"})
    assert response.status_code == 303 and response.headers["location"] == "/dashboard/login"
    assert browser.get("/dashboard").status_code == 401  # a script (no text/html) gets 401


def test_sessions_expire(settings: BudgetSettings) -> None:
    app = create_app(settings.model_copy(update={"dashboard_session_hours": 1e-9}))
    with TestClient(app, base_url="https://testserver", follow_redirects=False) as client:
        assert sign_in(client, ADMIN_TOKEN).status_code == 303
        assert client.get("/dashboard/data").status_code == 401
    app.state.engine.dispose()
