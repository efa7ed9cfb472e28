"""Tables (SQLAlchemy 2 ORM) and the API's schemas (pydantic: Base / Create / Public).

The ledger stores every DP event as reported, plus what the service recomputed
from the stored events: the cumulative epsilon at that event, the
institution's spending after it, and a flag when the report was too low.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, RootModel, field_validator, model_validator
from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    Double,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from common.dp_event import MAX_BATCH, Accountant


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator):
    """Timezone-aware UTC on the way out, on SQLite (which forgets the zone) and PostgreSQL alike."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value, dialect):
        return value.astimezone(UTC) if value is not None else None

    def process_result_value(self, value, dialect):
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


# SQLite only autoincrements an INTEGER PRIMARY KEY; PostgreSQL gets a 64-bit key.
BigId = BigInteger().with_variant(Integer(), "sqlite")


class Base(DeclarativeBase):
    pass


class Institution(Base):
    __tablename__ = "institutions"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    epsilon_limit: Mapped[float] = mapped_column(Double)
    delta: Mapped[float] = mapped_column(Double)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # Running summary, rewritten with every event in the same transaction.
    epsilon_recomputed: Mapped[float] = mapped_column(Double, default=0.0)
    epsilon_reported_max: Mapped[float] = mapped_column(Double, default=0.0)
    epsilon_spent: Mapped[float] = mapped_column(Double, default=0.0)
    epsilon_next_round: Mapped[float | None] = mapped_column(Double, nullable=True)
    rounds: Mapped[int] = mapped_column(Integer, default=0)
    flagged_events: Mapped[int] = mapped_column(Integer, default=0)
    last_event_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class ApiToken(Base):
    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    role: Mapped[str] = mapped_column(String(16))
    name: Mapped[str] = mapped_column(String(100))
    institution_id: Mapped[int | None] = mapped_column(ForeignKey("institutions.id"), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class PrivacyEvent(Base):
    __tablename__ = "privacy_events"
    __table_args__ = (
        UniqueConstraint("run_id", "server_round", "institution_id", name="uq_event_run_round_institution"),
        Index("ix_events_institution_id", "institution_id", "id"),
        Index("ix_events_run_id", "run_id"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(String(64))
    server_round: Mapped[int] = mapped_column(Integer)
    institution_id: Mapped[int] = mapped_column(ForeignKey("institutions.id"))
    noise_multiplier: Mapped[float] = mapped_column(Double)
    sample_rate: Mapped[float] = mapped_column(Double)
    steps: Mapped[int] = mapped_column(Integer)
    accountant: Mapped[str] = mapped_column(String(8))
    epsilon_reported: Mapped[float] = mapped_column(Double)
    delta: Mapped[float] = mapped_column(Double)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    epsilon_recomputed: Mapped[float] = mapped_column(Double)  # cumulative, with this event's accountant and delta
    epsilon_spent_after: Mapped[float] = mapped_column(Double)  # the institution's spending after this event
    flagged: Mapped[bool] = mapped_column(Boolean, default=False)
    flag_reason: Mapped[str | None] = mapped_column(Text, nullable=True)

    institution: Mapped[Institution] = relationship(lazy="joined")


# ---------------------------------------------------------------- API schemas


def _finite(name: str, value: float) -> float:
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value}")
    return value


class InstitutionBase(BaseModel):
    name: str = Field(min_length=1, max_length=100, description="Unique name, as the hospital's ClientApp reports it")
    epsilon_limit: float = Field(gt=0, description="Lifetime epsilon this institution may spend")
    delta: float = Field(gt=0, lt=1, description="The delta its epsilon is stated at, in (0, 1)")

    @field_validator("epsilon_limit", "delta")
    @classmethod
    def _is_finite(cls, value: float, info) -> float:
        return _finite(info.field_name, value)

    @field_validator("name")
    @classmethod
    def _printable(cls, value: str) -> str:
        if value != value.strip() or not value.isprintable():
            raise ValueError(f"name {value!r} has leading/trailing spaces or control characters")
        return value


class InstitutionCreate(InstitutionBase):
    model_config = ConfigDict(extra="forbid")


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
    name: str = Field(min_length=1, max_length=100)


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

    run_id: str = Field(min_length=1, max_length=64, description="Flower run id (a string: they exceed int64)")
    server_round: int = Field(ge=1)
    institution: str = Field(min_length=1, max_length=100)
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
    model_config = ConfigDict(extra="forbid")

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
