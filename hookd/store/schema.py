"""hookd's schema as SQLAlchemy Core metadata: the single description that the Alembic
migrations create and that a test compares the migrated database against.

Times are integer milliseconds since the epoch; ids are text. Queries live as named SQL
in ``hookd/store/sql/``, not here.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    Table,
    Text,
    text,
)

__all__ = ["metadata"]

metadata = MetaData()

organizations = Table(
    "organizations",
    metadata,
    Column("id", Text, primary_key=True),
    Column("name", Text, nullable=False, unique=True),
    Column("webhook_limit", Integer, nullable=False),
    # Its webhooks that are not deleted (migration 0009), changed by each create and delete
    # under the lock on this row, so that the limit is checked without counting them.
    Column("webhook_count", Integer, nullable=False, server_default=text("0")),
    Column("default_version", Text, nullable=False),
    Column("created_at", BigInteger, nullable=False),
)

api_keys = Table(
    "api_keys",
    metadata,
    Column("id", Text, primary_key=True),
    Column("organization_id", Text, ForeignKey("organizations.id"), nullable=False),
    Column("label", Text, nullable=True),
    Column("key_hash", Text, nullable=False, unique=True),
    Column("created_at", BigInteger, nullable=False),
    Column("revoked_at", BigInteger, nullable=True),
    Index("ix_api_keys_organization", "organization_id", "id"),
)

# Fixed-window request counters per API key, shared by every API process on PostgreSQL.
rate_counters = Table(
    "rate_counters",
    metadata,
    Column("key_id", Text, primary_key=True),
    Column("window_start", BigInteger, primary_key=True),
    Column("count", Integer, nullable=False),
)

# Live workers (heartbeats): a worker whose heartbeat lapses is dead and its leases go back to
# the queue; each claims with its share of the per-webhook and per-organization caps, and
# publishes it here so that a worker that starts knows at once how much is free.
workers = Table(
    "workers",
    metadata,
    Column("id", Text, primary_key=True),
    Column("started_at", BigInteger, nullable=False),
    Column("heartbeat_at", BigInteger, nullable=False),
    Column("webhook_share", Integer, nullable=False, server_default=text("0")),
    Column("org_share", Integer, nullable=False, server_default=text("0")),
    Column("stopping", Boolean, nullable=False, server_default=text("false")),
)

# Named values of the installation: the key that signs list cursors (created by the first
# process that needs it), and the row /readyz rewrites to prove the database takes writes.
instance_state = Table(
    "instance_state",
    metadata,
    Column("name", Text, primary_key=True),
    Column("value", Text, nullable=False),
    Column("updated_at", BigInteger, nullable=False),
)

webhooks = Table(
    "webhooks",
    metadata,
    Column("id", Text, primary_key=True),
    Column("organization_id", Text, ForeignKey("organizations.id"), nullable=False),
    Column("name", Text, nullable=False),
    Column("url", Text, nullable=False),
    Column("description", Text, nullable=True),
    Column("topics", Text, nullable=False),  # JSON array
    Column("status", Text, nullable=False),
    Column("timeout_ms", Integer, nullable=False),
    Column("headers", Text, nullable=False),  # JSON object
    Column("secret", Text, nullable=False),
    # Secrets still live after a rotation with a grace period: a JSON array of
    # {"secret", "expiresAt"}, newest first (migration 0005).
    Column("previous_secrets", Text, nullable=False, server_default=text("'[]'")),
    Column("version", Text, nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Column("updated_at", BigInteger, nullable=False),
    Column("deleted_at", BigInteger, nullable=True),
    Column("last_status_code", Integer, nullable=True),
    Column("last_status_message", Text, nullable=True),
    Column("last_status_at", BigInteger, nullable=True),
    Column("avg_response_time", Float, nullable=False, server_default=text("0")),
    Column("response_samples", BigInteger, nullable=False, server_default=text("0")),
    Column("last_response_time", BigInteger, nullable=False, server_default=text("0")),
    Column("errors_since_last_success", BigInteger, nullable=False, server_default=text("0")),
    Column("consecutive_failures", BigInteger, nullable=False, server_default=text("0")),
    Column("last_success_at", BigInteger, nullable=True),
    Index(
        "ix_webhooks_organization",
        "organization_id",
        "id",
        sqlite_where=text("deleted_at IS NULL"),
        postgresql_where=text("deleted_at IS NULL"),
    ),
    Index(
        "ix_webhooks_organization_status",
        "organization_id",
        "status",
        "id",
        sqlite_where=text("deleted_at IS NULL"),
        postgresql_where=text("deleted_at IS NULL"),
    ),
)

events = Table(
    "events",
    metadata,
    Column("id", Text, primary_key=True),
    Column("organization_id", Text, ForeignKey("organizations.id"), nullable=False),
    Column("topic", Text, nullable=False),
    Column("data", Text, nullable=False),  # {"object":"notification_event_data",...} as sent
    Column("conversation_id", Text, nullable=True),
    Column("conversation_url", Text, nullable=True),
    Column("is_test", Boolean, nullable=False),
    Column("created_at", BigInteger, nullable=False),
    # The W3C traceparent of the POST /v2/events that published it, when tracing is on
    # (migration 0006): each attempt's span links to that trace.
    Column("traceparent", Text, nullable=True),
    Index("ix_events_organization_created", "organization_id", "created_at"),
    Index("ix_events_created", "created_at"),
    # GET /v2/events, newest first by id (a UUIDv7 whose time is created_at); test events
    # are never listed (migration 0005).
    Index(
        "ix_events_organization_list",
        "organization_id",
        "id",
        sqlite_where=text("NOT is_test"),
        postgresql_where=text("NOT is_test"),
    ),
    Index(
        "ix_events_organization_topic",
        "organization_id",
        "topic",
        "id",
        sqlite_where=text("NOT is_test"),
        postgresql_where=text("NOT is_test"),
    ),
)

idempotency_keys = Table(
    "idempotency_keys",
    metadata,
    Column("organization_id", Text, primary_key=True),
    Column("key", Text, primary_key=True),
    Column("event_id", Text, nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Index("ix_idempotency_keys_created", "created_at"),
)

# The queue tables carry no foreign keys (migration 0008): each cost a parent look-up per
# delivery published and per attempt logged. Webhooks are never deleted, and the retention
# purge locks what it deletes so that no delivery or attempt outlives its parent (see
# hookd.store.queue.purge).
deliveries = Table(
    "deliveries",
    metadata,
    Column("id", Text, primary_key=True),
    Column("webhook_id", Text, nullable=False),
    Column("event_id", Text, nullable=False),
    Column("topic", Text, nullable=False),
    Column("is_test", Boolean, nullable=False),
    Column("status", Text, nullable=False),
    Column("attempt_count", Integer, nullable=False),
    Column("next_attempt_at", BigInteger, nullable=True),
    Column("lease_until", BigInteger, nullable=True),
    Column("lease_token", Text, nullable=True),
    Column("retry_requested", Boolean, nullable=False, server_default=text("false")),
    Column("last_attempt_at", BigInteger, nullable=True),
    Column("last_status_code", Integer, nullable=True),
    Column("last_status_message", Text, nullable=True),
    Column("created_at", BigInteger, nullable=False),
    Index("ix_deliveries_webhook_status", "webhook_id", "status", "id"),
    Index("ix_deliveries_event", "event_id", "webhook_id"),
    # The queue: each webhook's waiting deliveries in due order. Leased (in-flight) and
    # finished rows leave it, so claims never wade through them.
    Index(
        "ix_deliveries_queue",
        "webhook_id",
        "next_attempt_at",
        sqlite_where=text("status = 'pending' AND lease_until IS NULL"),
        postgresql_where=text("status = 'pending' AND lease_until IS NULL"),
    ),
    # In-flight deliveries per webhook (the cap), and expired leases.
    Index(
        "ix_deliveries_leased",
        "webhook_id",
        "lease_until",
        sqlite_where=text("lease_until IS NOT NULL"),
        postgresql_where=text("lease_until IS NOT NULL"),
    ),
    # Test deliveries are sent whatever the webhook's status, so they need their own way in.
    Index(
        "ix_deliveries_tests",
        "webhook_id",
        "next_attempt_at",
        sqlite_where=text("is_test AND status = 'pending' AND lease_until IS NULL"),
        postgresql_where=text("is_test AND status = 'pending' AND lease_until IS NULL"),
    ),
    # Waiting retries and test deliveries per webhook: up to half of a claim's slots go to
    # them, so that a backlog of first attempts does not hold them back.
    Index(
        "ix_deliveries_urgent",
        "webhook_id",
        "next_attempt_at",
        sqlite_where=text(
            "status = 'pending' AND lease_until IS NULL AND (attempt_count > 0 OR is_test)"
        ),
        postgresql_where=text(
            "status = 'pending' AND lease_until IS NULL AND (attempt_count > 0 OR is_test)"
        ),
    ),
)

attempts = Table(
    "attempts",
    metadata,
    Column("id", Text, primary_key=True),
    Column("delivery_id", Text, nullable=False),
    Column("webhook_id", Text, nullable=False),
    Column("attempt_number", Integer, nullable=False),
    Column("attempted_at", BigInteger, nullable=False),
    Column("succeeded", Boolean, nullable=False),
    Column("status_code", Integer, nullable=True),
    Column("response_time_ms", Integer, nullable=False),
    Column("response_body", LargeBinary, nullable=True),
    Column("error", Text, nullable=True),
    Index("ix_attempts_delivery", "delivery_id", "attempt_number"),
)

# Hourly rollups of each webhook's attempts (migration 0007), written with the attempts by
# the settle of each batch (hookd.store.rollups): the dashboard's counts, success rates and
# p95 response times read these, never the attempts table. ``b00``..``b23`` count attempts
# per response-time bucket (hookd.store.rollups.BUCKETS).
SKETCH_BUCKETS = 24

webhook_rollups = Table(
    "webhook_rollups",
    metadata,
    Column("webhook_id", Text, primary_key=True),
    Column("hour", BigInteger, primary_key=True),
    Column("attempts", Integer, nullable=False),
    Column("successes", Integer, nullable=False),
    Column("failures", Integer, nullable=False),
    Column("time_sum", BigInteger, nullable=False),
    *(Column(f"b{i:02d}", Integer, nullable=False) for i in range(SKETCH_BUCKETS)),
    Index("ix_webhook_rollups_hour", "hour"),
)

# Dashboard sessions (migration 0007): ``id`` is the SHA-256 of the session cookie's value.
# ``webhook_ids`` is a JSON array limiting what the session sees, or NULL for every webhook
# of the organization. A session ends at ``expires_at`` or when its API key is revoked.
dashboard_sessions = Table(
    "dashboard_sessions",
    metadata,
    Column("id", Text, primary_key=True),
    Column("organization_id", Text, ForeignKey("organizations.id"), nullable=False),
    Column("key_id", Text, ForeignKey("api_keys.id"), nullable=False),
    Column("webhook_ids", Text, nullable=True),
    Column("read_only", Boolean, nullable=False),
    Column("csrf_token", Text, nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Column("expires_at", BigInteger, nullable=False),
    Index("ix_dashboard_sessions_expires", "expires_at"),
)

# One-time portal links (migration 0007): ``id`` is the SHA-256 of the link's token. Using
# the link sets ``used_at`` and opens a session with the link's scope until ``expires_at``.
portal_links = Table(
    "portal_links",
    metadata,
    Column("id", Text, primary_key=True),
    Column("organization_id", Text, ForeignKey("organizations.id"), nullable=False),
    Column("key_id", Text, ForeignKey("api_keys.id"), nullable=False),
    Column("webhook_ids", Text, nullable=True),
    Column("read_only", Boolean, nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Column("expires_at", BigInteger, nullable=False),
    Column("used_at", BigInteger, nullable=True),
    Index("ix_portal_links_expires", "expires_at"),
)
