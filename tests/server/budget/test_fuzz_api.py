"""Fuzzing the budget API: any request, from any caller, is answered below 500.

Requests are generated per route (hypothesis): paths with hostile ids and run
ids, queries with hostile limits and offsets, bodies that are nearly valid
(one field wrong), any JSON, or not JSON at all; sent with the admin's, an
aggregator's, an institution's, a made-up or no token. They run against the
real app over a real SQLite file, whose ledger fills up as the fuzz goes (the
known 500s are pinned, on PostgreSQL too, in test_hostile_input.py).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from server.budget.core.config import BudgetSettings
from server.budget.main import create_app
from tests.server.budget.helpers import ADMIN_TOKEN, aggregator_token, bearer, register
from tests.support.hostile import hostile_floats, hostile_ints, hostile_text, json_values

HOSPITAL = "fuzz-hospital"
FUZZ = settings(
    max_examples=300,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


class Service:
    """The app under fuzz and one token per role; the institution's token is re-issued if the fuzz revokes it."""

    def __init__(self, client: TestClient) -> None:
        self.client = client
        self.institution_id = register(client, HOSPITAL)["id"]
        self.tokens = {
            "admin": ADMIN_TOKEN,
            "aggregator": aggregator_token(client),
            "institution": self._reissue(),
        }

    def _reissue(self) -> str:
        response = self.client.post(f"/v1/institutions/{self.institution_id}/token", headers=bearer(ADMIN_TOKEN))
        assert response.status_code == 201, response.text
        return response.json()["token"]

    def headers(self, role: str) -> dict[str, str]:
        if role == "none":
            return {}
        if role == "made-up":
            return bearer("fcb_" + "x" * 43)
        if role == "overlong":
            return bearer("x" * 100_000)
        return bearer(self.tokens[role])

    def after(self, method: str, path: str, status: int) -> None:
        if (
            method in ("POST", "DELETE")
            and path.startswith(f"/v1/institutions/{self.institution_id}/")
            and status < 300
        ):
            self.tokens["institution"] = self._reissue()


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    database = Path(tmp_path_factory.mktemp("fuzz")) / "budget.db"
    app = create_app(
        BudgetSettings(database_url=f"sqlite:///{database}", admin_token=ADMIN_TOKEN, token_cache_seconds=0)
    )
    with TestClient(app, raise_server_exceptions=False) as client:
        yield Service(client)
    app.state.engine.dispose()


def _escaped(value: object) -> str:
    """`value` percent-encoded for a URL; a lone surrogate goes as the invalid UTF-8 bytes it stands for."""
    return quote(str(value).encode("utf-8", "surrogatepass"), safe="")


def _segment(values: st.SearchStrategy) -> st.SearchStrategy[str]:
    return values.map(_escaped)


def institution_ids() -> st.SearchStrategy[str]:
    return _segment(st.one_of(st.sampled_from([1, 2]), hostile_ints(), hostile_text(max_size=30)))


def run_ids() -> st.SearchStrategy[str]:
    return _segment(st.one_of(st.sampled_from(["1795588208837835127", "1"]), hostile_ints(), hostile_text()))


VALID_EVENT_FIELDS = {
    "run_id": st.sampled_from(["1795588208837835127", "7", "run-b"]),
    "server_round": st.integers(min_value=1, max_value=50),
    "institution": st.just(HOSPITAL),
    "noise_multiplier": st.floats(min_value=0.01, max_value=100),
    "sample_rate": st.floats(min_value=1e-6, max_value=1),
    "steps": st.integers(min_value=1, max_value=10_000),
    "accountant": st.sampled_from(["rdp", "prv"]),
    "epsilon": st.floats(min_value=0, max_value=1e3),
    "delta": st.sampled_from([1e-5, 1e-6, 1e-3]),
}
HOSTILE_EVENT_FIELDS = {
    "run_id": st.one_of(hostile_text(), hostile_ints()),
    "server_round": st.one_of(hostile_ints(), hostile_floats()),
    "institution": hostile_text(),
    "noise_multiplier": hostile_floats(),
    "sample_rate": hostile_floats(),
    "steps": hostile_ints(),
    "accountant": hostile_text(max_size=5),
    "epsilon": hostile_floats(),
    "delta": hostile_floats(),
}


@st.composite
def events(draw: st.DrawFn) -> dict:
    """A DP event with valid numbers, or with one to three fields made hostile, dropped, or one added."""
    event = draw(st.fixed_dictionaries(VALID_EVENT_FIELDS))
    hostile = st.lists(st.sampled_from(sorted(event)), min_size=1, max_size=3, unique=True)
    for name in draw(st.just([]) | hostile):
        event[name] = draw(HOSTILE_EVENT_FIELDS[name])
    rarely = st.sampled_from([False] * 9 + [True])
    if draw(rarely):
        event.pop(draw(st.sampled_from(sorted(event))))
    if draw(rarely):
        event[draw(st.text(max_size=12))] = draw(json_values(max_leaves=2))
    return event


def institution_bodies() -> st.SearchStrategy:
    return st.one_of(
        st.fixed_dictionaries(
            {
                "name": hostile_text(max_size=120),
                "epsilon_limit": st.one_of(st.floats(min_value=0.1, max_value=100), hostile_floats()),
                "delta": st.one_of(st.just(1e-5), hostile_floats()),
            }
        ),
        json_values(),
    )


def bodies() -> st.SearchStrategy[bytes]:
    raw = st.one_of(
        st.binary(max_size=64),
        st.sampled_from([b"", b"{", b"[" * 5000 + b"]" * 5000, b'{"a":' * 3000 + b"1" + b"}" * 3000, b"NaN", b"1e999"]),
    )
    return st.one_of(
        json_values().map(lambda v: json.dumps(v).encode()),
        st.lists(events(), min_size=0, max_size=3).map(lambda v: json.dumps(v).encode()),
        raw,
    )


# Every route of the service, as its OpenAPI schema names it (a test checks that none is missing).
ROUTES = (
    "GET /healthz",
    "GET /metrics",
    "GET /dashboard",
    "GET /dashboard/data",
    "GET /dashboard/login",
    "POST /dashboard/login",
    "POST /dashboard/logout",
    "GET /v1/budgets",
    "GET /v1/institutions",
    "POST /v1/institutions",
    "GET /v1/institutions/{institution_id}",
    "GET /v1/institutions/{institution_id}/budget",
    "GET /v1/institutions/{institution_id}/events",
    "POST /v1/institutions/{institution_id}/token",
    "DELETE /v1/institutions/{institution_id}/tokens",
    "POST /v1/events",
    "GET /v1/runs/{run_id}/budget",
    "POST /v1/aggregators",
)


def forms() -> st.SearchStrategy[bytes]:
    """Sign-in and sign-out forms: url-encoded fields with hostile values, or raw bytes."""
    fields = st.dictionaries(
        st.sampled_from(["token", "csrf", "other"]),
        st.one_of(hostile_text(max_size=60), st.just(ADMIN_TOKEN), st.text(max_size=5000)),
        max_size=3,
    )
    return st.one_of(fields.map(lambda f: "&".join(f"{k}={_escaped(v)}" for k, v in f.items()).encode()), bodies())


FORM_ROUTES = ("POST /dashboard/login", "POST /dashboard/logout")
BODIES = {
    **{route: forms() for route in FORM_ROUTES},
    "POST /v1/events": events().map(lambda e: json.dumps(e).encode()),
    "POST /v1/institutions": institution_bodies().map(lambda b: json.dumps(b).encode()),
    "POST /v1/aggregators": st.fixed_dictionaries({"name": hostile_text(max_size=120)}).map(
        lambda b: json.dumps(b).encode()
    ),
}


@st.composite
def requests(draw: st.DrawFn) -> tuple[str, str, bytes | None]:
    """(method, path with its query, body) for one of the service's routes."""
    route = draw(st.sampled_from(ROUTES) | st.just("POST /v1/events"))  # events: half the requests
    method, template = route.split(" ")
    path = template.replace("{institution_id}", draw(institution_ids())).replace("{run_id}", draw(run_ids()))
    if template.endswith("}/events") or template.startswith("/dashboard") or template == "/v1/budgets":
        query = draw(
            st.dictionaries(
                st.sampled_from(["limit", "offset", "token", "institution"]),
                st.one_of(hostile_ints(), hostile_floats(), hostile_text(max_size=40)),
                max_size=3,
            )
        )
        path += "?" + "&".join(f"{key}={_escaped(value)}" for key, value in query.items())
    body = draw(st.one_of(BODIES[route], BODIES[route], bodies())) if route in BODIES else None
    return method, path, body


ROLES = st.sampled_from(["admin", "aggregator", "institution", "none", "made-up", "overlong"]) | st.sampled_from(
    ["admin", "aggregator"]  # the roles that may write: half the requests
)


@FUZZ
@given(request=requests(), role=ROLES)
def test_no_request_from_any_caller_gets_a_5xx(service: Service, request, role: str) -> None:
    method, path, body = request
    form = any(path.startswith(route.split(" ")[1]) and method == route.split(" ")[0] for route in FORM_ROUTES)
    content_type = "application/x-www-form-urlencoded" if form else "application/json"
    headers = {**service.headers(role), "content-type": content_type}
    response = service.client.request(method, path, content=body, headers=headers)
    assert response.status_code < 500, f"{method} {path} as {role}: {response.status_code} {response.text}"
    service.after(method, path, response.status_code)


def test_the_fuzz_covers_every_route_of_the_openapi_schema(service: Service) -> None:
    documented = {
        f"{method.upper()} {path}"
        for path, operations in service.client.get("/openapi.json").json()["paths"].items()
        for method in operations
    }
    assert documented == set(ROUTES)
