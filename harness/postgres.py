"""A real PostgreSQL for tests and benchmarks: one fresh database per use.

The server is the machine's own (``scripts/start-postgres.sh`` starts a throw-away one and
prints its URL); tests find it through ``$DIGITS_TEST_POSTGRES_URL``. Without it the PostgreSQL
cases are skipped with the reason, unless ``REQUIRE_POSTGRES=1`` (CI), which fails them instead.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Final

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

URL_ENV: Final = "DIGITS_TEST_POSTGRES_URL"
REQUIRE_ENV: Final = "REQUIRE_POSTGRES"


def admin_url() -> tuple[str | None, str]:
    """The server's URL, or None and why it cannot be used."""
    url = os.environ.get(URL_ENV)
    if not url:
        return None, (
            f"no PostgreSQL for the tests: set {URL_ENV} (scripts/start-postgres.sh starts "
            "one and prints it)"
        )
    try:
        engine = create_engine(url, connect_args={"connect_timeout": 3})
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
        engine.dispose()
    except SQLAlchemyError as exc:
        return None, f"PostgreSQL at {URL_ENV} is not answering: {type(exc).__name__}: {exc}"
    return url, ""


def required() -> bool:
    """Whether a missing PostgreSQL must fail the tests (CI) rather than skip them."""
    return os.environ.get(REQUIRE_ENV) == "1"


@contextmanager
def fresh_database(server_url: str, prefix: str = "digits_test") -> Iterator[str]:
    """A new empty database on the server; its URL while the block runs, dropped after."""
    name = f"{prefix}_{secrets.token_hex(6)}"
    admin = create_engine(server_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
        yield make_url(server_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
