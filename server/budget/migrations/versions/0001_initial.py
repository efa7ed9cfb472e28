"""Institutions, API tokens and the privacy event ledger.

Revision ID: 0001
Revises:
Create Date: 2026-05-20
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
When = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "institutions",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(100), nullable=False, unique=True),
        sa.Column("epsilon_limit", sa.Double(), nullable=False),
        sa.Column("delta", sa.Double(), nullable=False),
        sa.Column("created_at", When, nullable=False),
        sa.Column("epsilon_recomputed", sa.Double(), nullable=False, server_default="0"),
        sa.Column("epsilon_reported_max", sa.Double(), nullable=False, server_default="0"),
        sa.Column("epsilon_spent", sa.Double(), nullable=False, server_default="0"),
        sa.Column("epsilon_next_round", sa.Double(), nullable=True),
        sa.Column("rounds", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("flagged_events", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("last_event_at", When, nullable=True),
    )
    op.create_table(
        "api_tokens",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("token_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("institution_id", BigId, sa.ForeignKey("institutions.id"), nullable=True),
        sa.Column("created_at", When, nullable=False),
    )
    op.create_table(
        "privacy_events",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("run_id", sa.String(64), nullable=False),
        sa.Column("server_round", sa.Integer(), nullable=False),
        sa.Column("institution_id", BigId, sa.ForeignKey("institutions.id"), nullable=False),
        sa.Column("noise_multiplier", sa.Double(), nullable=False),
        sa.Column("sample_rate", sa.Double(), nullable=False),
        sa.Column("steps", sa.Integer(), nullable=False),
        sa.Column("accountant", sa.String(8), nullable=False),
        sa.Column("epsilon_reported", sa.Double(), nullable=False),
        sa.Column("delta", sa.Double(), nullable=False),
        sa.Column("received_at", When, nullable=False),
        sa.Column("epsilon_recomputed", sa.Double(), nullable=False),
        sa.Column("epsilon_spent_after", sa.Double(), nullable=False),
        sa.Column("flagged", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("flag_reason", sa.Text(), nullable=True),
        sa.UniqueConstraint("run_id", "server_round", "institution_id", name="uq_event_run_round_institution"),
    )
    op.create_index("ix_events_institution_id", "privacy_events", ["institution_id", "id"])
    op.create_index("ix_events_run_id", "privacy_events", ["run_id"])


def downgrade() -> None:
    op.drop_table("privacy_events")
    op.drop_table("api_tokens")
    op.drop_table("institutions")
