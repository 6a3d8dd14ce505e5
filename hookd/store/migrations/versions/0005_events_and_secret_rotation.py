"""Events can be listed and secrets rotated with a grace period.

``webhooks.previous_secrets`` holds the secrets a rotation with a grace period keeps live, as
a JSON array of ``{"secret", "expiresAt"}`` (ms), newest first; ``[]`` when none. It sits on
the webhook row so that a claim reads it with the rest of the webhook.

``GET /v2/events`` lists an organization's published events newest first, by id (a UUIDv7
whose time is ``createdAt``): ``ix_events_organization_list (organization_id, id)`` serves the
unfiltered list and ``ix_events_organization_topic (organization_id, topic, id)`` the list of
one topic, both partial (test events are never listed), both read as one range whatever the
``since``/``until`` window.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

_LISTED = sa.text("NOT is_test")


def upgrade() -> None:
    op.add_column(
        "webhooks",
        sa.Column("previous_secrets", sa.Text, nullable=False, server_default=sa.text("'[]'")),
    )
    op.create_index(
        "ix_events_organization_list",
        "events",
        ["organization_id", "id"],
        sqlite_where=_LISTED,
        postgresql_where=_LISTED,
    )
    op.create_index(
        "ix_events_organization_topic",
        "events",
        ["organization_id", "topic", "id"],
        sqlite_where=_LISTED,
        postgresql_where=_LISTED,
    )


def downgrade() -> None:
    op.drop_index("ix_events_organization_topic", table_name="events")
    op.drop_index("ix_events_organization_list", table_name="events")
    op.drop_column("webhooks", "previous_secrets")
