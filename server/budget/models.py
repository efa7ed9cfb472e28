"""The ledger's tables (SQLAlchemy 2 ORM); the API's schemas are in `schemas.py`.

The ledger stores every DP event as reported, plus what the service recomputed
from the stored events: the cumulative epsilon at that event, the
institution's spending after it, and a flag when the report was too low.
"""

from __future__ import annotations

from datetime import UTC, datetime

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


class DashboardSession(Base):
    """A browser signed in to the dashboard. The cookie holds a random id; only its SHA-256 is stored, and
    the token it signed in with is kept as its hash, so revoking the token ends the session too."""

    __tablename__ = "dashboard_sessions"
    __table_args__ = (Index("ix_dashboard_sessions_expires_at", "expires_at"),)

    id_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64))
    csrf: Mapped[str] = mapped_column(String(64))  # the logout form's token, bound to this session
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
