"""The initial schema: organizations, API keys, webhooks, events, deliveries, attempts.

Revision ID: 0001
Revises:
Create Date: 2026-11-23
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

_QUEUED = "status = 'pending' AND lease_until IS NULL"

# Each active webhook that has waiting deliveries, with the earliest due time. The recursive
# part walks ix_deliveries_queue one webhook at a time (a loose index scan), so a claim costs
# in proportion to the number of webhooks with work, not to the length of the backlog.
QUEUE_HEADS_VIEW = f"""
CREATE VIEW queue_heads AS
WITH RECURSIVE hooks(webhook_id) AS (
    SELECT (SELECT webhook_id FROM deliveries WHERE {_QUEUED} ORDER BY webhook_id LIMIT 1)
    UNION ALL
    SELECT (SELECT d.webhook_id FROM deliveries d
            WHERE d.{_QUEUED.replace(" AND ", " AND d.")} AND d.webhook_id > hooks.webhook_id
            ORDER BY d.webhook_id LIMIT 1)
    FROM hooks WHERE hooks.webhook_id IS NOT NULL
)
SELECT w.id AS webhook_id, w.timeout_ms,
       (SELECT min(d.next_attempt_at) FROM deliveries d
        WHERE d.webhook_id = w.id AND d.{_QUEUED.replace(" AND ", " AND d.")}) AS head
FROM hooks JOIN webhooks w ON w.id = hooks.webhook_id
WHERE w.status = 'active' AND w.deleted_at IS NULL
"""


def _partial(where: str) -> dict[str, Any]:
    return {"sqlite_where": sa.text(where), "postgresql_where": sa.text(where)}


def upgrade() -> None:
    op.create_table(
        "organizations",
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("name", sa.Text, nullable=False, unique=True),
        sa.Column("webhook_limit", sa.Integer, nullable=False),
        sa.Column("default_version", sa.Text, nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "api_keys",
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("organization_id", sa.Text, sa.ForeignKey("organizations.id"), nullable=False),
        sa.Column("label", sa.Text),
        sa.Column("key_hash", sa.Text, nullable=False, unique=True),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.Column("revoked_at", sa.BigInteger),
    )
    op.create_index("ix_api_keys_organization", "api_keys", ["organization_id", "id"])
    op.create_table(
        "rate_counters",
        sa.Column("key_id", sa.Text, primary_key=True),
        sa.Column("window_start", sa.BigInteger, primary_key=True),
        sa.Column("count", sa.Integer, nullable=False),
    )
    op.create_table(
        "workers",
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("started_at", sa.BigInteger, nullable=False),
        sa.Column("heartbeat_at", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "webhooks",
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("organization_id", sa.Text, sa.ForeignKey("organizations.id"), nullable=False),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("url", sa.Text, nullable=False),
        sa.Column("description", sa.Text),
        sa.Column("topics", sa.Text, nullable=False),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("timeout_ms", sa.Integer, nullable=False),
        sa.Column("headers", sa.Text, nullable=False),
        sa.Column("secret", sa.Text, nullable=False),
        sa.Column("version", sa.Text, nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.Column("updated_at", sa.BigInteger, nullable=False),
        sa.Column("deleted_at", sa.BigInteger),
        sa.Column("last_status_code", sa.Integer),
        sa.Column("last_status_message", sa.Text),
        sa.Column("last_status_at", sa.BigInteger),
        sa.Column("avg_response_time", sa.Float, nullable=False, server_default=sa.text("0")),
        sa.Column("response_samples", sa.BigInteger, nullable=False, server_default=sa.text("0")),
        sa.Column("last_response_time", sa.BigInteger, nullable=False, server_default=sa.text("0")),
        sa.Column(
            "errors_since_last_success", sa.BigInteger, nullable=False, server_default=sa.text("0")
        ),
        sa.Column(
            "consecutive_failures", sa.BigInteger, nullable=False, server_default=sa.text("0")
        ),
        sa.Column("last_success_at", sa.BigInteger),
    )
    op.create_index(
        "ix_webhooks_organization",
        "webhooks",
        ["organization_id", "id"],
        **_partial("deleted_at IS NULL"),
    )
    op.create_index(
        "ix_webhooks_organization_status",
        "webhooks",
        ["organization_id", "status", "id"],
        **_partial("deleted_at IS NULL"),
    )
    op.create_table(
        "events",
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("organization_id", sa.Text, sa.ForeignKey("organizations.id"), nullable=False),
        sa.Column("topic", sa.Text, nullable=False),
        sa.Column("data", sa.Text, nullable=False),
        sa.Column("conversation_id", sa.Text),
        sa.Column("conversation_url", sa.Text),
        sa.Column("is_test", sa.Boolean, nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_events_organization_created", "events", ["organization_id", "created_at"])
    op.create_index("ix_events_created", "events", ["created_at"])
    op.create_table(
        "idempotency_keys",
        sa.Column("organization_id", sa.Text, primary_key=True),
        sa.Column("key", sa.Text, primary_key=True),
        sa.Column("event_id", sa.Text, nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_idempotency_keys_created", "idempotency_keys", ["created_at"])
    op.create_table(
        "deliveries",
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("webhook_id", sa.Text, sa.ForeignKey("webhooks.id"), nullable=False),
        sa.Column("event_id", sa.Text, sa.ForeignKey("events.id"), nullable=False),
        sa.Column("topic", sa.Text, nullable=False),
        sa.Column("is_test", sa.Boolean, nullable=False),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("attempt_count", sa.Integer, nullable=False),
        sa.Column("next_attempt_at", sa.BigInteger),
        sa.Column("lease_until", sa.BigInteger),
        sa.Column("lease_token", sa.Text),
        sa.Column("retry_requested", sa.Boolean, nullable=False, server_default=sa.text("false")),
        sa.Column("last_attempt_at", sa.BigInteger),
        sa.Column("last_status_code", sa.Integer),
        sa.Column("last_status_message", sa.Text),
        sa.Column("created_at", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_deliveries_webhook", "deliveries", ["webhook_id", "id"])
    op.create_index("ix_deliveries_webhook_status", "deliveries", ["webhook_id", "status", "id"])
    op.create_index("ix_deliveries_event", "deliveries", ["event_id", "webhook_id"])
    op.create_index(
        "ix_deliveries_queue", "deliveries", ["webhook_id", "next_attempt_at"], **_partial(_QUEUED)
    )
    op.create_index(
        "ix_deliveries_leased",
        "deliveries",
        ["webhook_id", "lease_until"],
        **_partial("lease_until IS NOT NULL"),
    )
    op.create_index(
        "ix_deliveries_tests",
        "deliveries",
        ["next_attempt_at"],
        **_partial(f"is_test AND {_QUEUED}"),
    )
    op.create_table(
        "attempts",
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("delivery_id", sa.Text, sa.ForeignKey("deliveries.id"), nullable=False),
        sa.Column("webhook_id", sa.Text, nullable=False),
        sa.Column("attempt_number", sa.Integer, nullable=False),
        sa.Column("attempted_at", sa.BigInteger, nullable=False),
        sa.Column("succeeded", sa.Boolean, nullable=False),
        sa.Column("status_code", sa.Integer),
        sa.Column("response_time_ms", sa.Integer, nullable=False),
        sa.Column("response_body", sa.LargeBinary),
        sa.Column("error", sa.Text),
    )
    op.create_index("ix_attempts_delivery", "attempts", ["delivery_id", "attempt_number"])
    op.execute(QUEUE_HEADS_VIEW)


def downgrade() -> None:
    op.execute("DROP VIEW queue_heads")
    for table in (
        "attempts",
        "deliveries",
        "idempotency_keys",
        "events",
        "webhooks",
        "rate_counters",
        "workers",
        "api_keys",
        "organizations",
    ):
        op.drop_table(table)
