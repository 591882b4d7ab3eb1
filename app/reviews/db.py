"""The review queue's database: SQLite by default, PostgreSQL for several replicas.

:func:`open_database` makes the engine with the settings each database needs to be shared by
several processes; :func:`upgrade` applies the Alembic migrations (``app/reviews/migrations/``)
safely when several processes start at once.

- **SQLite** (``sqlite:///<data dir>/reviews.sqlite3``, the default): write-ahead log, so
  readers never wait for the writer, and every transaction starts with ``BEGIN IMMEDIATE``, so
  two worker processes never both read a row as free and then both take it (SQLite has no
  row locks; this makes transactions that write one at a time, waiting up to
  :data:`SQLITE_BUSY_SECONDS` for each other).
- **PostgreSQL** (``postgresql+psycopg://...``): a short connect timeout and statement timeout,
  so a database that went away fails a queue call in seconds rather than holding a request;
  connections are checked before use, so one that died is replaced.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, event, inspect, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from app.reviews.tables import Base

logger = logging.getLogger(__name__)

MIGRATIONS: Final = Path(__file__).with_name("migrations")
#: How long a SQLite transaction waits for another process's before failing.
SQLITE_BUSY_SECONDS: Final = 10.0
#: PostgreSQL: seconds to connect, and milliseconds a statement may run.
CONNECT_TIMEOUT_SECONDS: Final = 3
STATEMENT_TIMEOUT_MS: Final = 5000
#: The key of the PostgreSQL advisory lock that serializes migrations across replicas.
MIGRATION_LOCK_KEY: Final = 0x646967_72657673  # "dig" "revs"
SQLITE_FILE: Final = "reviews.sqlite3"


def default_url(data_dir: Path) -> str:
    """The embedded default: a SQLite file in the service's data directory."""
    return f"sqlite:///{(data_dir / SQLITE_FILE).resolve()}"


def redacted(url: str) -> str:
    """The URL with its password hidden, for logs and messages."""
    return make_url(url).render_as_string(hide_password=True)


@dataclass(frozen=True, slots=True)
class Database:
    """An open database: its engine and a session factory."""

    url: str
    engine: Engine
    sessions: sessionmaker[Session]

    @property
    def dialect(self) -> str:
        """``sqlite`` or ``postgresql``."""
        return self.engine.dialect.name

    def dispose(self) -> None:
        """Close every pooled connection."""
        self.engine.dispose()

    def file_identity(self) -> tuple[int, int] | None:
        """SQLite on a file: the file's (device, inode), ``(0, 0)`` while it is missing; None
        for any other database.

        A connection open on a SQLite file keeps writing to it after it was deleted or replaced,
        where nobody will ever read: comparing this with its value at open tells (one ``stat``,
        no query).
        """
        if self.dialect != "sqlite":
            return None
        path = self.engine.url.database
        if not path or path == ":memory:":
            return None
        try:
            found = os.stat(path)
        except FileNotFoundError:
            return (0, 0)
        return (found.st_dev, found.st_ino)


def open_database(url: str) -> Database:
    """An engine for ``url`` set up to be shared by processes (see the module's docstring).

    Nothing is connected yet: a database that is down fails the first call, not this one.

    Raises:
        ValueError: for a URL of another database than SQLite or PostgreSQL.
    """
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        engine = _sqlite_engine(url)
    elif backend == "postgresql":
        engine = create_engine(
            url,
            pool_pre_ping=True,
            pool_size=4,
            max_overflow=4,
            pool_timeout=CONNECT_TIMEOUT_SECONDS,
            connect_args={
                "connect_timeout": CONNECT_TIMEOUT_SECONDS,
                "options": f"-c statement_timeout={STATEMENT_TIMEOUT_MS}",
            },
        )
    else:
        raise ValueError(
            f"The review queue runs on SQLite or PostgreSQL, not {backend!r}: set "
            "DIGITS_REVIEW_DATABASE_URL to sqlite:///path or postgresql+psycopg://user:pass@host/db."
        )
    return Database(url, engine, sessionmaker(engine, expire_on_commit=False))


def _sqlite_engine(url: str) -> Engine:
    path = make_url(url).database
    if path and path != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(
        url, connect_args={"timeout": SQLITE_BUSY_SECONDS, "check_same_thread": False}
    )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Transactions are begun by the "begin" hook below, not by the driver.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={int(SQLITE_BUSY_SECONDS * 1000)}")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def _alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config


def head_revision() -> str:
    """The newest migration's revision."""
    head = ScriptDirectory.from_config(_alembic_config()).get_current_head()
    assert head is not None
    return head


def current_revision(database: Database) -> str | None:
    """The revision the database is at (None: never migrated)."""
    with database.engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def missing_tables(database: Database) -> list[str]:
    """The queue's tables (those of ``app/reviews/tables.py``) the database lacks."""
    with database.engine.connect() as connection:
        inspector = inspect(connection)
        return [name for name in Base.metadata.tables if not inspector.has_table(name)]


def upgrade(database: Database) -> str:
    """Apply every migration the database lacks; return the revision it is now at.

    Safe to run by several processes at once, and again and again: on PostgreSQL they queue on
    an advisory lock, on SQLite on the database's write lock (``BEGIN IMMEDIATE``); the ones
    that come second find the schema at its head and change nothing.
    """
    config = _alembic_config()
    with database.engine.connect() as connection:
        postgres = database.dialect == "postgresql"
        if postgres:
            connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
            connection.commit()
        try:
            config.attributes["connection"] = connection
            command.upgrade(config, "head")
            connection.commit()
        finally:
            if postgres:
                connection.execute(
                    text("SELECT pg_advisory_unlock(:key)"), {"key": MIGRATION_LOCK_KEY}
                )
                connection.commit()
    revision = current_revision(database)
    logger.info("review queue database at revision %s (%s)", revision, redacted(database.url))
    return revision or ""
