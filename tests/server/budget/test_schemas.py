"""The service's event schemas are the DP event of `common.dp_event`: this fails when they drift apart."""

from __future__ import annotations

import typing

from common.dp_event import ACCOUNTANTS, LEDGER_FIELDS, DPEvent
from common.settings import RunSettings
from server.budget.schemas import EventBase, EventCreate, EventPublic


def test_event_schemas_declare_exactly_the_ledger_fields_of_the_dp_event() -> None:
    assert set(EventBase.model_fields) == set(LEDGER_FIELDS)
    assert set(LEDGER_FIELDS) <= set(EventPublic.model_fields)


def test_event_schema_field_types_are_the_dp_events() -> None:
    declared = typing.get_type_hints(DPEvent)
    for name, field in EventBase.model_fields.items():
        if name == "institution":
            assert field.annotation is str
        else:
            assert field.annotation == declared[name], name


def test_the_accountants_are_declared_once() -> None:
    assert typing.get_args(EventBase.model_fields["accountant"].annotation) == ACCOUNTANTS
    assert typing.get_args(RunSettings.model_fields["accountant"].annotation) == ACCOUNTANTS


def test_a_dp_event_as_the_server_app_forwards_it_is_a_valid_event() -> None:
    event = DPEvent(
        noise_multiplier=1.1,
        sample_rate=0.1,
        steps=20,
        accountant="prv",
        epsilon=1.0,
        delta=1e-5,
        run_id=1795588208837835127,
        server_round=2,
    )
    created = EventCreate.model_validate(event.for_ledger(institution="St Mary"))
    assert created.model_dump() == event.for_ledger(institution="St Mary")
