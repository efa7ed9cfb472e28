"""Alembic environment for the budget service.

The service upgrades its database itself at start
(`server.budget.core.db.upgrade_schema`), handing over an open connection in
`config.attributes["connection"]`; a `sqlalchemy.url` main option is used only
when alembic is driven by hand.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from server.budget.models import Base

target_metadata = Base.metadata


def _run(connection) -> None:
    context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = context.config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    url = context.config.get_main_option("sqlalchemy.url")
    if not url:
        raise RuntimeError("no database connection: set sqlalchemy.url or pass a connection in config.attributes")
    with create_engine(url).connect() as connection:
        _run(connection)
        connection.commit()


if context.is_offline_mode():
    context.configure(
        url=context.config.get_main_option("sqlalchemy.url"), target_metadata=target_metadata, literal_binds=True
    )
    with context.begin_transaction():
        context.run_migrations()
else:
    run_migrations_online()
