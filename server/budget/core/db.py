"""Database engine, sessions and migrations.

SQLite runs in WAL mode with `synchronous=FULL` (a committed event survives a
power cut) and a busy timeout. Write transactions start with `BEGIN IMMEDIATE`
so concurrent writers queue on the busy timeout instead of failing when a
read lock cannot be upgraded. PostgreSQL is used as it comes; writers lock
the institution's row instead (see crud.py).
"""

from __future__ import annotations

import logging
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event, make_url
from sqlalchemy.orm import Session, sessionmaker

from server.budget.core.config import BudgetSettings

log = logging.getLogger("fedcare.budget")

MIGRATIONS_DIR = Path(__file__).resolve().parents[1] / "migrations"
WRITE_OPTION = "fedcare_write"


def make_engine(settings: BudgetSettings) -> Engine:
    url = make_url(settings.database_url)
    if url.get_backend_name() == "sqlite":
        return _sqlite_engine(settings, url)
    if url.get_backend_name() == "postgresql" and url.drivername == "postgresql":
        url = url.set(drivername="postgresql+psycopg")  # psycopg 3 is what the project ships
    # No pre-ping (a round trip per request): after a database restart SQLAlchemy drops the stale pool on the
    # first error, that one request fails with 500, and clients retry.
    return create_engine(url, pool_size=settings.db_pool_size, max_overflow=2 * settings.db_pool_size)


def _sqlite_engine(settings: BudgetSettings, url) -> Engine:
    if url.database and url.database != ":memory:":
        Path(url.database).expanduser().resolve().parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(
        url,
        connect_args={"check_same_thread": False, "timeout": settings.sqlite_busy_timeout_ms / 1000},
        pool_size=settings.db_pool_size,
        max_overflow=2 * settings.db_pool_size,
    )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record) -> None:
        dbapi_connection.isolation_level = None  # we emit BEGIN ourselves, below
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute(f"PRAGMA busy_timeout={int(settings.sqlite_busy_timeout_ms)}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection) -> None:
        immediate = connection.get_execution_options().get(WRITE_OPTION, False)
        # Straight to the driver: no statement caching or events needed for these two words.
        connection.connection.dbapi_connection.execute("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(bind=engine, expire_on_commit=False)


def begin_write(session: Session) -> None:
    """Open the session's transaction as a write transaction (BEGIN IMMEDIATE on SQLite).

    Call it before the session runs any statement; a transaction already open
    for reading is committed first (reads made so far stay valid).
    """
    if session.in_transaction():
        session.commit()
    session.connection(execution_options={WRITE_OPTION: True})


def upgrade_schema(engine: Engine) -> None:
    """Bring the database to the newest schema with Alembic (works from an installed package)."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    # One migrator at a time: SQLite's BEGIN IMMEDIATE, PostgreSQL's transaction-scoped advisory lock.
    with engine.connect().execution_options(**{WRITE_OPTION: True}) as connection:
        with connection.begin():
            if engine.dialect.name == "postgresql":
                connection.exec_driver_sql("SELECT pg_advisory_xact_lock(4242420001)")
            config.attributes["connection"] = connection
            command.upgrade(config, "head")
    log.info("budget database schema is at the newest revision (%s)", engine.url.render_as_string(hide_password=True))
