"""The queue tables lose their foreign keys, and PostgreSQL gets per-table storage settings.

``deliveries.webhook_id``, ``deliveries.event_id`` and ``attempts.delivery_id`` no longer
reference their parents. Each reference cost a look-up of the parent's key (and on
PostgreSQL a row lock) for every delivery published and every attempt logged: 23 ms of the
51 ms that publishing one event to 1,000 webhooks took on PostgreSQL (bench/README.md,
"Fan-out"). What they guarded is kept by the code instead:

* webhooks are never deleted, only marked (``deleted_at``);
* deliveries are inserted with their event in one transaction, or (a recovery) for an
  event that the retention purge spares: on PostgreSQL the purge locks the events it picked
  and deletes only those that still have no delivery, and a recovery locks the events it
  reads (``FOR KEY SHARE``); on SQLite both are transactions of the one writer;
* attempts are written only by the settle of a leased delivery, and the purge takes only
  deliveries that are not leased and locks them (PostgreSQL: ``FOR UPDATE SKIP LOCKED``) so
  that none is leased until the purge has deleted it.

PostgreSQL: ``webhooks`` keeps room on each page (``fillfactor`` 70) so that the health
columns the settle updates (none of them indexed) are HOT updates, and the queue tables are
vacuumed after a smaller share of their rows changed than PostgreSQL's default 20 %, so that
dead rows of finished deliveries don't pile up between vacuums of a large table.

SQLite keeps foreign keys in the table's definition, so its two tables are rebuilt: a new
table from the old one's SQL without the ``FOREIGN KEY`` clauses, the rows copied, the old
table dropped and the new one renamed, then the old indexes recreated from their SQL. This
copies every delivery and attempt once (2.7 s for 500,000 of each here).

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-06
"""

from __future__ import annotations

import re

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

# (table, column, parent table) of each reference this migration drops.
_REFERENCES = (
    ("deliveries", "webhook_id", "webhooks"),
    ("deliveries", "event_id", "events"),
    ("attempts", "delivery_id", "deliveries"),
)
# Children first: dropping ``deliveries`` on SQLite must not meet a reference from attempts.
_SQLITE_ORDER = ("attempts", "deliveries")

# PostgreSQL storage parameters set here, and the defaults that the downgrade restores.
_PG_STORAGE = {
    "webhooks": "fillfactor = 70",
    "deliveries": "autovacuum_vacuum_scale_factor = 0.02, "
    "autovacuum_vacuum_insert_scale_factor = 0.05, autovacuum_analyze_scale_factor = 0.02",
    "attempts": "autovacuum_vacuum_insert_scale_factor = 0.05, "
    "autovacuum_analyze_scale_factor = 0.05",
    "events": "autovacuum_vacuum_insert_scale_factor = 0.05, "
    "autovacuum_analyze_scale_factor = 0.05",
}
_PG_RESET = {
    "webhooks": "fillfactor",
    "deliveries": "autovacuum_vacuum_scale_factor, autovacuum_vacuum_insert_scale_factor, "
    "autovacuum_analyze_scale_factor",
    "attempts": "autovacuum_vacuum_insert_scale_factor, autovacuum_analyze_scale_factor",
    "events": "autovacuum_vacuum_insert_scale_factor, autovacuum_analyze_scale_factor",
}

_FOREIGN_KEY = re.compile(
    r",\s*(?:CONSTRAINT\s+\w+\s+)?FOREIGN KEY\s*\([^)]*\)\s*REFERENCES\s+\w+\s*\([^)]*\)",
    re.IGNORECASE,
)


def _sqlite_rebuild(table: str, sql_of: dict[str, str]) -> None:
    """Rebuild ``table`` from the SQL ``sql_of(table)`` would give it (its foreign keys
    changed), keeping its rows and its indexes exactly."""
    bind = op.get_bind()
    indexes = [
        row[0]
        for row in bind.exec_driver_sql(
            "SELECT sql FROM sqlite_master WHERE type = 'index' AND tbl_name = ? "
            "AND sql IS NOT NULL",
            (table,),
        )
    ]
    columns = [row[1] for row in bind.exec_driver_sql(f"PRAGMA table_info({table})")]
    listed = ", ".join(columns)
    create = re.sub(rf"^CREATE TABLE \"?{table}\"?", f"CREATE TABLE {table}_rebuilt", sql_of[table])
    op.execute(create)
    op.execute(f"INSERT INTO {table}_rebuilt ({listed}) SELECT {listed} FROM {table}")
    op.execute(f"DROP TABLE {table}")
    op.execute(f"ALTER TABLE {table}_rebuilt RENAME TO {table}")
    for index in indexes:
        op.execute(index)


def _sqlite_rebuild_all(sql_of: dict[str, str], order: tuple[str, ...]) -> None:
    """Rebuild the tables in ``order``. Views (``queue_heads``) go first and come back
    after: SQLite refuses to rename a table while a view names a table that is missing."""
    bind = op.get_bind()
    views = list(
        bind.exec_driver_sql("SELECT name, sql FROM sqlite_master WHERE type = 'view'")
    )
    for name, _sql in views:
        op.execute(f"DROP VIEW {name}")
    for table in order:
        _sqlite_rebuild(table, sql_of)
    for _name, sql in views:
        op.execute(sql)


def _sqlite_tables() -> dict[str, str]:
    bind = op.get_bind()
    return {
        row[0]: row[1]
        for row in bind.exec_driver_sql(
            "SELECT name, sql FROM sqlite_master WHERE type = 'table' "
            "AND name IN ('deliveries', 'attempts')"
        )
    }


def _pg_foreign_key(table: str, column: str) -> str | None:
    for fk in sa.inspect(op.get_bind()).get_foreign_keys(table):
        if fk["constrained_columns"] == [column]:
            name = fk["name"]
            return str(name) if name else None
    return None


def upgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        tables = _sqlite_tables()
        stripped = {name: _FOREIGN_KEY.sub("", sql) for name, sql in tables.items()}
        _sqlite_rebuild_all(stripped, _SQLITE_ORDER)
        return
    for table, column, _parent in _REFERENCES:
        name = _pg_foreign_key(table, column)
        if name is not None:
            op.drop_constraint(name, table, type_="foreignkey")
    for table, storage in _PG_STORAGE.items():
        op.execute(f"ALTER TABLE {table} SET ({storage})")


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        tables = _sqlite_tables()
        restored = {}
        for name, sql in tables.items():
            references = "".join(
                f", \n\tFOREIGN KEY({column}) REFERENCES {parent} (id)"
                for table, column, parent in _REFERENCES
                if table == name
            )
            restored[name] = re.sub(r"\)\s*$", references + "\n)", sql.rstrip())
        _sqlite_rebuild_all(restored, _SQLITE_ORDER)
        return
    for table, reset in _PG_RESET.items():
        op.execute(f"ALTER TABLE {table} RESET ({reset})")
    for table, column, parent in _REFERENCES:
        op.create_foreign_key(f"{table}_{column}_fkey", table, parent, [column], ["id"])
