"""The API's schemas (pydantic: Base / Create / Public), as in the FastAPI full-stack template.

The event schemas are the DP event of `common.dp_event`; a test fails if their
fields drift from its `LEDGER_FIELDS`. What the service stores (and so every
Public schema) has the loose ranges any stored row meets; the Create schemas
add the tighter ranges of `server.budget.limits`, so a row stored before a
range was tightened can still be read.
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, RootModel, field_validator, model_validator

from common.dp_event import MAX_BATCH, Accountant
from server.budget.limits import (
    EVENT_RANGES,
    INSTITUTION_RANGES,
    MAX_NAME_LENGTH,
    MAX_RUN_ID_LENGTH,
    PrintableText,
    Range,
    printable,
)
from server.budget.models import PrivacyEvent


def _finite(name: str, value: float) -> float:
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value}")
    return value


def _show_ranges(ranges: dict[str, Range]):
    """A json_schema_extra that states `ranges` in the OpenAPI schema, as Field(ge=..., le=...) would."""

    def extra(schema: dict) -> None:
        for name, bounds in ranges.items():
            schema["properties"][name].update(bounds.json_schema())

    return extra


class InstitutionBase(BaseModel):
    name: str = Field(
        min_length=1, max_length=MAX_NAME_LENGTH, description="Unique name, as the hospital's ClientApp reports it"
    )
    epsilon_limit: float = Field(gt=0, description="Lifetime epsilon this institution may spend")
    delta: float = Field(gt=0, lt=1, description="The delta its epsilon is stated at, in (0, 1)")

    @field_validator("epsilon_limit", "delta")
    @classmethod
    def _is_finite(cls, value: float, info) -> float:
        return _finite(info.field_name, value)

    @field_validator("name")
    @classmethod
    def _printable(cls, value: str) -> str:
        return printable(value)


class InstitutionCreate(InstitutionBase):
    model_config = ConfigDict(extra="forbid", json_schema_extra=_show_ranges(INSTITUTION_RANGES))

    @field_validator(*INSTITUTION_RANGES)
    @classmethod
    def _in_range(cls, value: float, info) -> float:
        return INSTITUTION_RANGES[info.field_name].check(info.field_name, value)


class InstitutionPublic(InstitutionBase):
    model_config = ConfigDict(from_attributes=True)
    id: int
    created_at: datetime


class InstitutionCreated(InstitutionPublic):
    token: str = Field(description="The institution's API token. Shown once; only its hash is stored.")


class InstitutionToken(BaseModel):
    institution_id: int
    institution: str
    token: str = Field(description="The institution's new API token. Shown once; every earlier token stops working.")


class TokensRevoked(BaseModel):
    institution_id: int
    institution: str
    revoked: int = Field(description="How many tokens stopped working (0 when none was left)")


class AggregatorCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: PrintableText = Field(min_length=1, max_length=MAX_NAME_LENGTH)


class AggregatorCreated(BaseModel):
    id: int
    name: str
    token: str = Field(description="The aggregator's API token. Shown once; only its hash is stored.")


class BudgetPublic(BaseModel):
    institution_id: int
    institution: str
    epsilon_spent: float = Field(description="max(recomputed from the ledger, highest epsilon reported)")
    epsilon_limit: float
    epsilon_remaining: float
    delta: float
    rounds: int = Field(description="Events (rounds) in the ledger, over all runs")
    last_event_at: datetime | None
    epsilon_recomputed: float
    epsilon_reported: float
    epsilon_next_round: float | None = Field(description="Spending after one more round like the last one")
    can_cover_next_round: bool
    flagged_events: int


class EventBase(BaseModel):
    """The DP event of `common.dp_event` (its `LEDGER_FIELDS`), with the ranges the service accepts."""

    run_id: str = Field(
        min_length=1, max_length=MAX_RUN_ID_LENGTH, description="Flower run id (a string: they exceed int64)"
    )
    server_round: int = Field(ge=1)
    institution: str = Field(min_length=1, max_length=MAX_NAME_LENGTH)
    noise_multiplier: float = Field(gt=0)
    sample_rate: float = Field(gt=0, le=1)
    steps: int = Field(ge=1)
    accountant: Accountant
    epsilon: float = Field(ge=0, description="Cumulative epsilon the client reports after this round")
    delta: float = Field(gt=0, lt=1)

    @field_validator("noise_multiplier", "sample_rate", "epsilon", "delta")
    @classmethod
    def _is_finite(cls, value: float, info) -> float:
        return _finite(info.field_name, value)


class EventCreate(EventBase):
    model_config = ConfigDict(extra="forbid", json_schema_extra=_show_ranges(EVENT_RANGES))

    @field_validator(*EVENT_RANGES)
    @classmethod
    def _in_range(cls, value: float, info) -> float:
        return EVENT_RANGES[info.field_name].check(info.field_name, value)

    @field_validator("run_id", "institution")
    @classmethod
    def _printable(cls, value: str) -> str:
        return printable(value)

    @model_validator(mode="before")
    @classmethod
    def _run_id_as_text(cls, data):
        if isinstance(data, dict) and isinstance(data.get("run_id"), int) and not isinstance(data["run_id"], bool):
            return {**data, "run_id": str(data["run_id"])}
        return data


class EventBatch(RootModel[list[EventCreate]]):
    """One event object or a list of up to MAX_BATCH."""

    root: list[EventCreate] = Field(min_length=1, max_length=MAX_BATCH)

    @model_validator(mode="before")
    @classmethod
    def _one_or_many(cls, data):
        return [data] if isinstance(data, dict) else data


class EventPublic(EventBase):
    id: int
    received_at: datetime
    epsilon_recomputed: float
    epsilon_spent_after: float
    flagged: bool
    flag_reason: str | None

    @classmethod
    def of(cls, row: PrivacyEvent) -> EventPublic:
        return cls(
            id=row.id,
            run_id=row.run_id,
            server_round=row.server_round,
            institution=row.institution.name,
            noise_multiplier=row.noise_multiplier,
            sample_rate=row.sample_rate,
            steps=row.steps,
            accountant=row.accountant,
            epsilon=row.epsilon_reported,
            delta=row.delta,
            received_at=row.received_at,
            epsilon_recomputed=row.epsilon_recomputed,
            epsilon_spent_after=row.epsilon_spent_after,
            flagged=row.flagged,
            flag_reason=row.flag_reason,
        )


class EventOutcome(BaseModel):
    outcome: Literal["created", "duplicate", "conflict"] = Field(
        description="created; duplicate (same key, same numbers); "
        "conflict (same key, other numbers: the stored event wins)"
    )
    event: EventPublic


class EventsWritten(BaseModel):
    created: int
    duplicates: int
    conflicts: int
    results: list[EventOutcome]


class EventPage(BaseModel):
    items: list[EventPublic]
    total: int
    limit: int
    offset: int
    next_offset: int | None


class RunInstitutionSpending(BaseModel):
    institution_id: int
    institution: str
    rounds: int
    first_round: int
    last_round: int
    epsilon_before: float = Field(description="The institution's spending before this run's first event")
    epsilon_after: float = Field(description="Its spending after this run's last event")
    epsilon_spent_in_run: float
    flagged_events: int


class RunBudget(BaseModel):
    run_id: str
    institutions: list[RunInstitutionSpending]


class Health(BaseModel):
    status: Literal["ok"]
    database: str
    version: str
    accounting: Literal["ready", "warming"] = Field(
        description="'warming' while Opacus loads after a start (seconds); writes wait for it meanwhile"
    )
