"""Fair claims and worker shares: the queue knows each webhook's organization, due retries and
test deliveries have an index of their own, and workers publish their shares of the caps.

* ``queue_heads`` gains ``organization_id`` (claims are fair across organizations and bounded
  by ``HOOKD_MAX_IN_FLIGHT_PER_ORG``), ``active``, and ``urgent`` (when the webhook's oldest
  due retry or test delivery falls due: those get up to half of a claim's slots). Paused and
  suspended webhooks appear too, with the head of their test deliveries only, so that test
  deliveries are claimed like any other delivery and count against the caps.
* ``ix_deliveries_tests`` is per webhook (``webhook_id, next_attempt_at``), and
  ``ix_deliveries_urgent`` holds the waiting retries and test deliveries per webhook.
* ``workers`` gains the shares of the per-webhook and per-organization caps that each worker
  claims with, and whether it is stopping, so that a worker that starts can tell at once how
  much of the caps is free (see hookd/delivery/worker.py).

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-04
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

_QUEUED = "d.status = 'pending' AND d.lease_until IS NULL"
# Waiting retries (attempted before) and test deliveries: they get up to half of a claim's
# slots of their webhook, so that a backlog of first attempts does not hold them back.
_URGENT = "(d.attempt_count > 0 OR d.is_test)"

# Each webhook that has claimable deliveries: an active webhook with waiting deliveries, or a
# paused or suspended one with waiting test deliveries, with the earliest due time of those
# (head) and of its retries and test deliveries (urgent). The recursive part walks
# ix_deliveries_queue one webhook at a time (a loose index scan), so a claim costs in
# proportion to the number of webhooks with work, not to the length of the backlog.
# SQLite, which keeps no statistics, is told which index finds test deliveries: it would
# otherwise walk ix_deliveries_urgent, all of a suspended webhook's held retries with them.
_QUEUE_HEADS_VIEW = """
CREATE VIEW queue_heads AS
WITH RECURSIVE hooks(webhook_id) AS (
    SELECT (SELECT d.webhook_id FROM deliveries d WHERE {queued}
            ORDER BY d.webhook_id LIMIT 1)
    UNION ALL
    SELECT (SELECT d.webhook_id FROM deliveries d
            WHERE {queued} AND d.webhook_id > hooks.webhook_id
            ORDER BY d.webhook_id LIMIT 1)
    FROM hooks WHERE hooks.webhook_id IS NOT NULL
)
SELECT w.id AS webhook_id, w.organization_id, w.timeout_ms, w.status = 'active' AS active,
       CASE WHEN w.status = 'active'
            THEN (SELECT min(d.next_attempt_at) FROM deliveries d
                  WHERE d.webhook_id = w.id AND {queued})
            ELSE (SELECT min(d.next_attempt_at) FROM deliveries d{tests_index}
                  WHERE d.webhook_id = w.id AND d.is_test AND {queued})
       END AS head,
       CASE WHEN w.status = 'active'
            THEN (SELECT min(d.next_attempt_at) FROM deliveries d
                  WHERE d.webhook_id = w.id AND {queued} AND {urgent})
       END AS urgent
FROM hooks JOIN webhooks w ON w.id = hooks.webhook_id
WHERE w.deleted_at IS NULL
"""


def queue_heads_view(dialect: str) -> str:
    """The ``CREATE VIEW queue_heads`` statement for ``dialect``."""
    return _QUEUE_HEADS_VIEW.format(
        queued=_QUEUED,
        urgent=_URGENT,
        tests_index=" INDEXED BY ix_deliveries_tests" if dialect == "sqlite" else "",
    )


def _partial(where: str) -> dict[str, Any]:
    return {"sqlite_where": sa.text(where), "postgresql_where": sa.text(where)}


def _first_view() -> str:
    """The view as migration 0001 created it (for the downgrade)."""
    script = op.get_context().script
    assert script is not None
    revision_0001 = script.get_revision("0001")
    assert revision_0001 is not None
    return str(revision_0001.module.QUEUE_HEADS_VIEW)


def _bare(condition: str) -> str:
    """``condition`` without the table alias, as an index's WHERE."""
    return condition.replace("d.", "")


def upgrade() -> None:
    queued = _bare(_QUEUED)
    op.execute("DROP VIEW queue_heads")
    op.drop_index("ix_deliveries_tests", table_name="deliveries")
    op.create_index(
        "ix_deliveries_tests",
        "deliveries",
        ["webhook_id", "next_attempt_at"],
        **_partial(f"is_test AND {queued}"),
    )
    op.create_index(
        "ix_deliveries_urgent",
        "deliveries",
        ["webhook_id", "next_attempt_at"],
        **_partial(f"{queued} AND {_bare(_URGENT)}"),
    )
    with op.batch_alter_table("workers") as batch:
        batch.add_column(
            sa.Column("webhook_share", sa.Integer, nullable=False, server_default=sa.text("0"))
        )
        batch.add_column(
            sa.Column("org_share", sa.Integer, nullable=False, server_default=sa.text("0"))
        )
        batch.add_column(
            sa.Column("stopping", sa.Boolean, nullable=False, server_default=sa.text("false"))
        )
    op.execute(queue_heads_view(op.get_bind().dialect.name))


def downgrade() -> None:
    queued = _bare(_QUEUED)
    op.execute("DROP VIEW queue_heads")
    with op.batch_alter_table("workers") as batch:
        batch.drop_column("stopping")
        batch.drop_column("org_share")
        batch.drop_column("webhook_share")
    op.drop_index("ix_deliveries_urgent", table_name="deliveries")
    op.drop_index("ix_deliveries_tests", table_name="deliveries")
    op.create_index(
        "ix_deliveries_tests",
        "deliveries",
        ["next_attempt_at"],
        **_partial(f"is_test AND {queued}"),
    )
    op.execute(_first_view())
