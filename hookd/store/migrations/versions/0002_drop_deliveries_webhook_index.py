"""Drop ix_deliveries_webhook: listing a webhook's deliveries uses the status index.

``ix_deliveries_webhook (webhook_id, id)`` served only the delivery log's listing without
a status filter. That listing now reads ``ix_deliveries_webhook_status (webhook_id,
status, id)`` once per status and merges the pages (``list_deliveries``), so every delivery
written no longer updates a sixth B-tree: 1.4 % fewer instructions per delivery end to end
(bench/instructions.py, route e).

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-03
"""

from __future__ import annotations

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_index("ix_deliveries_webhook", table_name="deliveries")


def downgrade() -> None:
    op.create_index("ix_deliveries_webhook", "deliveries", ["webhook_id", "id"])
