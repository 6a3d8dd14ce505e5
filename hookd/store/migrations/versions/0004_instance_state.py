"""instance_state: small named values of the installation (the cursor signing key) and the
row that ``/readyz`` rewrites to prove the database accepts a write.

The cursor key is made here, so that listing (a read) never has to write it: a database
that refuses writes still pages.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-06
"""

from __future__ import annotations

import secrets
import time

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    table = op.create_table(
        "instance_state",
        sa.Column("name", sa.Text, primary_key=True),
        sa.Column("value", sa.Text, nullable=False),
        sa.Column("updated_at", sa.BigInteger, nullable=False),
    )
    op.bulk_insert(
        table,
        [
            {
                "name": "cursor_key",
                "value": secrets.token_hex(32),
                "updated_at": round(time.time() * 1000),
            }
        ],
    )


def downgrade() -> None:
    op.drop_table("instance_state")
