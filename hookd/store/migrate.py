"""Applying the Alembic migrations, safely when several hookd processes start at once."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

import asyncpg
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, create_engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import create_async_engine

from hookd.errors import DatabaseUnavailable

__all__ = ["head_revision", "upgrade", "upgrade_async"]

_MIGRATIONS = Path(__file__).with_name("migrations")
# Any constant will do, as long as no other application on the database uses it.
_PG_MIGRATION_LOCK = 7242318000


def _config(connection: Connection) -> Config:
    config = Config()
    config.set_main_option("script_location", str(_MIGRATIONS))
    config.attributes["connection"] = connection
    return config


def head_revision() -> str:
    head = ScriptDirectory(str(_MIGRATIONS)).get_current_head()
    assert head is not None
    return head


def _upgrade_connection(connection: Connection) -> None:
    if connection.dialect.name == "postgresql":
        # Held to the end of the transaction, so concurrent starts upgrade one at a time.
        connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_PG_MIGRATION_LOCK})")
    current = MigrationContext.configure(connection).get_current_revision()
    if current != head_revision():
        command.upgrade(_config(connection), "head")


@contextlib.contextmanager
def _file_lock(path: str) -> Iterator[None]:
    with open(path + ".migrate-lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _sqlite_upgrade(path: str) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    engine = create_engine(f"sqlite:///{path}")
    try:
        with _file_lock(path), engine.connect() as connection:
            connection.exec_driver_sql("PRAGMA journal_mode=WAL")
            _upgrade_connection(connection)
            connection.commit()
    finally:
        engine.dispose()


async def _pg_upgrade(url: str) -> None:
    # asyncpg reads the URL itself (sslmode and the other libpq parameters), exactly as the
    # store's driver does; SQLAlchemy only needs to know the dialect.
    engine = create_async_engine(
        "postgresql+asyncpg://", async_creator=lambda: asyncpg.connect(url)
    )
    try:
        async with engine.connect() as connection:
            await connection.run_sync(_upgrade_connection)
            await connection.commit()
    finally:
        await engine.dispose()


async def upgrade_async(database_url: str) -> None:
    """Bring the database at ``database_url`` to the newest schema.

    Raises :class:`DatabaseUnavailable` (with the reason in ``detail``) when the database
    cannot be reached or opened.
    """
    try:
        if database_url.startswith("sqlite:///"):
            await asyncio.to_thread(_sqlite_upgrade, database_url[len("sqlite:///") :])
        else:
            await _pg_upgrade(database_url)
    except (DBAPIError, asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
        cause = exc.orig if isinstance(exc, DBAPIError) and exc.orig is not None else exc
        reason = str(getattr(cause, "__cause__", None) or cause).splitlines()[0]
        raise DatabaseUnavailable(reason) from exc


def upgrade(database_url: str) -> None:
    """Synchronous :func:`upgrade_async`, for the command line."""
    asyncio.run(upgrade_async(database_url))
