"""Events keep the trace context of the request that published them.

``events.traceparent`` is the W3C ``traceparent`` of ``POST /v2/events`` when hookd exports
OpenTelemetry spans (the ``otel`` extra and ``OTEL_EXPORTER_OTLP_ENDPOINT``), ``NULL``
otherwise: each attempt's span links to that trace, in whichever process it runs.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("events", sa.Column("traceparent", sa.Text, nullable=True))


def downgrade() -> None:
    op.drop_column("events", "traceparent")
