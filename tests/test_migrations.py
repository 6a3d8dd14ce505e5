"""The Alembic migrations (hookd/store/migrations) against hookd/store/schema.py, on SQLite
and PostgreSQL: the migrated schema is the metadata, upgrades are idempotent and safe when
several processes start at once, and downgrading to base then upgrading again works.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, create_engine, inspect, text
from sqlalchemy.ext.asyncio import create_async_engine

import hookd.store.migrate as migrate
from hookd.store.migrate import head_revision, upgrade
from hookd.store.schema import metadata
from tests.conftest import ADMIN_DSN
from tests.processes import hookd_command, hookd_env

T = TypeVar("T")

MIGRATIONS = Path(migrate.__file__).with_name("migrations")
# Objects the migrations create on purpose beyond the metadata (see test_schema_matches_metadata).
VIEWS = {"queue_heads"}


# Databases.


async def _admin(sql: str) -> None:
    conn = await asyncpg.connect(ADMIN_DSN, timeout=5)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@pytest.fixture
def empty_database_url(
    engine: str, request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[str]:
    """A database of the test's engine with nothing in it: a SQLite path that does not
    exist yet, or a new empty PostgreSQL database (dropped afterwards)."""
    if engine == "sqlite":
        yield f"sqlite:///{tmp_path / 'empty.db'}"
        return
    request.getfixturevalue("postgres_template")  # skips (or fails under CI) without PostgreSQL
    name = f"hookd_m_{uuid.uuid4().hex[:12]}"
    asyncio.run(_admin(f'CREATE DATABASE "{name}"'))
    try:
        yield f"{ADMIN_DSN.rpartition('/')[0]}/{name}"
    finally:
        asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def on_connection(url: str, work: Callable[[Connection], T]) -> T:
    """Run ``work`` with a synchronous SQLAlchemy connection to ``url`` (committed after)."""
    if url.startswith("sqlite:///"):
        sync_engine = create_engine(url)
        try:
            with sync_engine.connect() as conn:
                result = work(conn)
                conn.commit()
                return result
        finally:
            sync_engine.dispose()

    async def run() -> T:
        async_engine = create_async_engine("postgresql+asyncpg://" + url.split("://", 1)[1])
        try:
            async with async_engine.connect() as conn:
                result = await conn.run_sync(work)
                await conn.commit()
                return result
        finally:
            await async_engine.dispose()

    return asyncio.run(run())


# What a database looks like.


def differences(conn: Connection) -> list[Any]:
    """Alembic's autogenerate diff between the database and hookd's metadata."""
    context = MigrationContext.configure(
        conn, opts={"compare_type": True, "compare_server_default": True}
    )
    return list(compare_metadata(context, metadata))


def _predicate(value: Any) -> str | None:
    if value is None:
        return None
    normalized = str(value).lower().replace("::text", "")
    normalized = re.sub(r"[()]", " ", normalized)
    return " ".join(normalized.split())


def partial_index_differences(conn: Connection) -> list[str]:
    """Partial indexes whose WHERE clause differs from the metadata's (autogenerate does not
    compare predicates, and the queue's indexes depend on them)."""
    dialect = conn.dialect.name
    inspector = inspect(conn)
    found: list[str] = []
    for table in metadata.sorted_tables:
        reflected = {ix["name"]: ix for ix in inspector.get_indexes(table.name)}
        for index in table.indexes:
            expected = _predicate(index.dialect_options[dialect].get("where"))
            actual_ix = reflected.get(str(index.name))
            if actual_ix is None:
                found.append(f"{index.name}: missing")
                continue
            options = actual_ix.get("dialect_options") or {}
            actual = _predicate(options.get(f"{dialect}_where"))
            if actual != expected:
                found.append(f"{index.name}: WHERE {actual!r}, expected {expected!r}")
    return found


def snapshot(conn: Connection) -> dict[str, Any]:
    """Tables, columns, indexes, views and the Alembic revision: what a re-run must not change."""
    inspector = inspect(conn)
    tables = sorted(inspector.get_table_names())
    return {
        "tables": tables,
        "columns": {
            t: [(c["name"], str(c["type"]), c["nullable"]) for c in inspector.get_columns(t)]
            for t in tables
        },
        "indexes": {
            t: sorted((str(i["name"]), tuple(i["column_names"])) for i in inspector.get_indexes(t))
            for t in tables
        },
        "views": sorted(inspector.get_view_names()),
        "revision": MigrationContext.configure(conn).get_current_revision(),
    }


def assert_at_head(url: str) -> None:
    def check(conn: Connection) -> None:
        assert MigrationContext.configure(conn).get_current_revision() == head_revision()
        versions = conn.execute(text("SELECT version_num FROM alembic_version")).all()
        assert [tuple(v) for v in versions] == [(head_revision(),)]
        assert differences(conn) == []
        assert partial_index_differences(conn) == []
        assert set(inspect(conn).get_view_names()) >= VIEWS

    on_connection(url, check)


# Tests.


def test_one_linear_history() -> None:
    script = ScriptDirectory(str(MIGRATIONS))
    assert script.get_heads() == [head_revision()]
    revisions = list(script.walk_revisions())
    assert revisions[-1].down_revision is None
    for revision in revisions:
        assert revision.module.downgrade is not None


def test_schema_matches_metadata(empty_database_url: str) -> None:
    """compare_metadata finds no difference. Justified extras, not in the metadata: the
    ``alembic_version`` table (Alembic's own, ignored by compare_metadata) and the
    ``queue_heads`` view (SQL the migration creates for the queue; views are not part of
    SQLAlchemy metadata, so it is checked for separately)."""
    upgrade(empty_database_url)

    def check(conn: Connection) -> None:
        assert differences(conn) == []
        assert partial_index_differences(conn) == []
        inspector = inspect(conn)
        assert set(inspector.get_table_names()) == set(metadata.tables) | {"alembic_version"}
        assert set(inspector.get_view_names()) == VIEWS
        # The view is usable on an empty database.
        assert conn.execute(text("SELECT count(*) FROM queue_heads")).scalar_one() == 0

    on_connection(empty_database_url, check)
    assert_at_head(empty_database_url)


def test_upgrade_is_idempotent_and_keeps_data(empty_database_url: str) -> None:
    upgrade(empty_database_url)
    before = on_connection(empty_database_url, snapshot)

    def insert(conn: Connection) -> None:
        conn.execute(
            text(
                "INSERT INTO organizations (id, name, webhook_limit, default_version, created_at)"
                " VALUES ('0123456789abcdef01234567', 'kept', 10, '2026-01-01.nova', 1)"
            )
        )

    on_connection(empty_database_url, insert)
    upgrade(empty_database_url)
    upgrade(empty_database_url)
    assert on_connection(empty_database_url, snapshot) == before
    names = on_connection(
        empty_database_url,
        lambda conn: conn.execute(text("SELECT name FROM organizations")).scalars().all(),
    )
    assert names == ["kept"]
    assert_at_head(empty_database_url)


def test_concurrent_upgrades_in_threads(empty_database_url: str) -> None:
    workers = 4
    barrier = threading.Barrier(workers)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            barrier.wait(timeout=30)
            upgrade(empty_database_url)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(thread.is_alive() for thread in threads)
    assert errors == []
    assert_at_head(empty_database_url)


def test_concurrent_hookd_migrate_processes(empty_database_url: str, tmp_path: Path) -> None:
    processes = [
        subprocess.Popen(
            [*hookd_command(), "migrate"],
            env=hookd_env(database_url=empty_database_url),
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    outputs = [process.communicate(timeout=120) for process in processes]
    for process, (out, err) in zip(processes, outputs, strict=True):
        assert process.returncode == 0, f"{out}\n{err}"
    assert_at_head(empty_database_url)


def _alembic(conn: Connection, action: Callable[[Config], None]) -> None:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = conn
    action(config)


def test_downgrade_to_base_then_upgrade_again(empty_database_url: str) -> None:
    upgrade(empty_database_url)
    on_connection(
        empty_database_url, lambda conn: _alembic(conn, lambda c: command.downgrade(c, "base"))
    )

    def emptied(conn: Connection) -> None:
        inspector = inspect(conn)
        assert set(inspector.get_table_names()) <= {"alembic_version"}
        assert inspector.get_view_names() == []
        assert MigrationContext.configure(conn).get_current_revision() is None

    on_connection(empty_database_url, emptied)
    upgrade(empty_database_url)
    assert_at_head(empty_database_url)
    # And once more through Alembic's own command, as an operator would.
    on_connection(
        empty_database_url, lambda conn: _alembic(conn, lambda c: command.downgrade(c, "base"))
    )
    on_connection(
        empty_database_url, lambda conn: _alembic(conn, lambda c: command.upgrade(c, "head"))
    )
    assert_at_head(empty_database_url)


def _row(conn: Connection, table: str, **given: Any) -> None:
    """Insert a row into ``table`` with ``given`` values and a plain value for every other
    required column, by the column's reflected type."""
    values = dict(given)
    for column in inspect(conn).get_columns(table):
        if column["name"] in values or column["nullable"] or column.get("default") is not None:
            continue
        kind = str(column["type"]).upper()
        values[column["name"]] = (
            False
            if "BOOL" in kind
            else 1
            if "INT" in kind
            else b""
            if "BLOB" in kind or "BYTEA" in kind
            else "x"
        )
    names = ", ".join(values)
    marks = ", ".join(f":{name}" for name in values)
    conn.execute(text(f"INSERT INTO {table} ({names}) VALUES ({marks})"), values)


def test_0008_drops_the_queue_tables_foreign_keys_and_keeps_their_rows(
    empty_database_url: str,
) -> None:
    """Migration 0008 on a database with a delivery and its attempt: both rows (and the
    queue's partial indexes and view) are kept, and the three references are gone, so a
    delivery of a webhook or event that is not there is accepted (the code guards them, see
    hookd.store.queue.purge). The downgrade puts the references back."""
    on_connection(
        empty_database_url, lambda conn: _alembic(conn, lambda c: command.upgrade(c, "0007"))
    )

    def fill(conn: Connection) -> None:
        _row(conn, "organizations", id="org")
        _row(conn, "webhooks", id="wh", organization_id="org", status="active")
        _row(conn, "events", id="ev", organization_id="org", is_test=False)
        _row(conn, "deliveries", id="dl", webhook_id="wh", event_id="ev", status="pending")
        _row(conn, "attempts", id="at", delivery_id="dl", webhook_id="wh")

    def references(conn: Connection) -> set[tuple[str, str]]:
        inspector = inspect(conn)
        return {
            (table, fk["referred_table"])
            for table in ("deliveries", "attempts")
            for fk in inspector.get_foreign_keys(table)
        }

    on_connection(empty_database_url, fill)
    assert on_connection(empty_database_url, references) == {
        ("deliveries", "webhooks"),
        ("deliveries", "events"),
        ("attempts", "deliveries"),
    }
    upgrade(empty_database_url)
    assert_at_head(empty_database_url)
    assert on_connection(empty_database_url, references) == set()

    def kept(conn: Connection) -> tuple[Any, ...]:
        return (
            conn.execute(text("SELECT id, webhook_id, event_id, status FROM deliveries")).all(),
            conn.execute(text("SELECT id, delivery_id FROM attempts")).all(),
            conn.execute(text("SELECT webhook_id FROM queue_heads")).scalars().all(),
        )

    assert on_connection(empty_database_url, kept) == (
        [("dl", "wh", "ev", "pending")],
        [("at", "dl")],
        ["wh"],
    )
    on_connection(
        empty_database_url,
        lambda conn: _row(
            conn, "deliveries", id="orphan", webhook_id="none", event_id="none", status="failed"
        ),
    )
    on_connection(
        empty_database_url,
        lambda conn: conn.execute(text("DELETE FROM deliveries WHERE id = 'orphan'")),
    )
    on_connection(
        empty_database_url, lambda conn: _alembic(conn, lambda c: command.downgrade(c, "0007"))
    )
    assert on_connection(empty_database_url, references) == {
        ("deliveries", "webhooks"),
        ("deliveries", "events"),
        ("attempts", "deliveries"),
    }
    assert on_connection(empty_database_url, kept)[:2] == (
        [("dl", "wh", "ev", "pending")],
        [("at", "dl")],
    )


def test_0009_counts_each_organizations_webhooks(empty_database_url: str) -> None:
    """Migration 0009 fills organizations.webhook_count from the webhooks not deleted."""
    on_connection(
        empty_database_url, lambda conn: _alembic(conn, lambda c: command.upgrade(c, "0008"))
    )

    def fill(conn: Connection) -> None:
        for org in ("a", "b", "c"):
            _row(conn, "organizations", id=org, name=org)
        _row(conn, "webhooks", id="a1", organization_id="a", status="active")
        _row(conn, "webhooks", id="a2", organization_id="a", status="paused")
        _row(conn, "webhooks", id="a3", organization_id="a", status="active", deleted_at=5)
        _row(conn, "webhooks", id="b1", organization_id="b", status="active", deleted_at=5)

    on_connection(empty_database_url, fill)
    upgrade(empty_database_url)
    assert_at_head(empty_database_url)
    counts = on_connection(
        empty_database_url,
        lambda conn: conn.execute(
            text("SELECT id, webhook_count FROM organizations ORDER BY id")
        ).all(),
    )
    assert [tuple(c) for c in counts] == [("a", 2), ("b", 0), ("c", 0)]
