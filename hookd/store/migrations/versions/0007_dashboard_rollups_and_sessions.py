"""The dashboard: hourly rollups of each webhook's attempts, dashboard sessions and one-time
portal links (SPEC §9).

``webhook_rollups`` has one row per webhook and hour (``hour``: the hour's first ms) with
its attempts, successes, failures, the sum of response times and a response-time sketch of
24 log-spaced buckets (``b00``..``b23``, see :mod:`hookd.store.rollups`), so that the
dashboard's charts and p95s read at most 168 rows a webhook instead of its attempts. The
settle of each batch of attempts upserts them in the same transaction.

``dashboard_sessions`` and ``portal_links`` hold the SHA-256 of their secrets only.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

_BUCKETS = 24


def upgrade() -> None:
    op.create_table(
        "webhook_rollups",
        sa.Column("webhook_id", sa.Text, primary_key=True),
        sa.Column("hour", sa.BigInteger, primary_key=True),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("successes", sa.Integer, nullable=False),
        sa.Column("failures", sa.Integer, nullable=False),
        sa.Column("time_sum", sa.BigInteger, nullable=False),
        *(sa.Column(f"b{i:02d}", sa.Integer, nullable=False) for i in range(_BUCKETS)),
    )
    op.create_index("ix_webhook_rollups_hour", "webhook_rollups", ["hour"])
    op.create_table(
        "dashboard_sessions",
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("organization_id", sa.Text, sa.ForeignKey("organizations.id"), nullable=False),
        sa.Column("key_id", sa.Text, sa.ForeignKey("api_keys.id"), nullable=False),
        sa.Column("webhook_ids", sa.Text, nullable=True),
        sa.Column("read_only", sa.Boolean, nullable=False),
        sa.Column("csrf_token", sa.Text, nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.Column("expires_at", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_dashboard_sessions_expires", "dashboard_sessions", ["expires_at"])
    op.create_table(
        "portal_links",
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("organization_id", sa.Text, sa.ForeignKey("organizations.id"), nullable=False),
        sa.Column("key_id", sa.Text, sa.ForeignKey("api_keys.id"), nullable=False),
        sa.Column("webhook_ids", sa.Text, nullable=True),
        sa.Column("read_only", sa.Boolean, nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.Column("expires_at", sa.BigInteger, nullable=False),
        sa.Column("used_at", sa.BigInteger, nullable=True),
    )
    op.create_index("ix_portal_links_expires", "portal_links", ["expires_at"])


def downgrade() -> None:
    op.drop_index("ix_portal_links_expires", table_name="portal_links")
    op.drop_table("portal_links")
    op.drop_index("ix_dashboard_sessions_expires", table_name="dashboard_sessions")
    op.drop_table("dashboard_sessions")
    op.drop_index("ix_webhook_rollups_hour", table_name="webhook_rollups")
    op.drop_table("webhook_rollups")
