-- hookd's named queries, shared by SQLite and PostgreSQL.
-- Parameters are written :name; the PostgreSQL driver rewrites them to $n.
-- A query of the same name in sqlite.sql or postgres.sql replaces the one here.
-- Times are milliseconds since the epoch.

-- name: org_insert
INSERT INTO organizations (id, name, webhook_limit, default_version, created_at)
VALUES (:id, :name, :webhook_limit, :default_version, :created_at);

-- name: org_list
SELECT id, name, webhook_limit, default_version, created_at FROM organizations ORDER BY id;

-- name: org_by_id
SELECT id, name, webhook_limit, default_version, created_at FROM organizations WHERE id = :id;

-- name: org_by_name
SELECT id, name, webhook_limit, default_version, created_at FROM organizations WHERE name = :name;

-- name: org_any
SELECT id FROM organizations LIMIT 1;

-- name: org_lock
-- Serialises webhook creation within one organization (the webhook limit).
SELECT id, webhook_limit, webhook_count FROM organizations WHERE id = :id;

-- name: state_insert_missing
-- Two processes may create it at once: the first one's value stays.
INSERT INTO instance_state (name, value, updated_at) VALUES (:name, :value, :now)
ON CONFLICT (name) DO NOTHING;

-- name: state_get
SELECT value FROM instance_state WHERE name = :name;

-- name: state_touch
INSERT INTO instance_state (name, value, updated_at) VALUES (:name, '', :now)
ON CONFLICT (name) DO UPDATE SET updated_at = excluded.updated_at;

-- name: key_insert
INSERT INTO api_keys (id, organization_id, label, key_hash, created_at, revoked_at)
VALUES (:id, :organization_id, :label, :key_hash, :created_at, NULL);

-- name: key_list
SELECT id, organization_id, label, created_at, revoked_at FROM api_keys
WHERE organization_id = :organization_id ORDER BY id;

-- name: key_by_id
SELECT id, organization_id, label, created_at, revoked_at FROM api_keys WHERE id = :id;

-- name: key_revoke
UPDATE api_keys SET revoked_at = :now WHERE id = :id AND revoked_at IS NULL;

-- name: auth
SELECT k.id AS key_id, k.revoked_at, o.id AS org_id, o.name AS org_name,
       o.webhook_limit, o.default_version, o.created_at AS org_created_at
FROM api_keys k JOIN organizations o ON o.id = k.organization_id
WHERE k.key_hash = :key_hash;

-- name: rate_purge
DELETE FROM rate_counters WHERE window_start < :before;

-- name: webhook_insert
INSERT INTO webhooks (id, organization_id, name, url, description, topics, status, timeout_ms,
                      headers, secret, version, created_at, updated_at)
VALUES (:id, :organization_id, :name, :url, :description, :topics, :status, :timeout_ms,
        :headers, :secret, :version, :created_at, :updated_at);

-- name: webhook_get
SELECT * FROM webhooks WHERE id = :id AND organization_id = :organization_id AND deleted_at IS NULL;

-- name: webhook_get_locked
SELECT * FROM webhooks WHERE id = :id AND organization_id = :organization_id AND deleted_at IS NULL;

-- name: webhook_count_add
-- After a create (+1) or a delete (-1), under the lock on the organization's row.
UPDATE organizations SET webhook_count = webhook_count + :delta WHERE id = :organization_id;

-- name: webhook_list
SELECT * FROM webhooks
WHERE organization_id = :organization_id AND deleted_at IS NULL AND id < :before
ORDER BY id DESC LIMIT :limit;

-- name: webhook_list_status
SELECT * FROM webhooks
WHERE organization_id = :organization_id AND deleted_at IS NULL AND status = :status AND id < :before
ORDER BY id DESC LIMIT :limit;

-- name: webhook_update
UPDATE webhooks
SET name = :name, url = :url, description = :description, topics = :topics, status = :status,
    timeout_ms = :timeout_ms, headers = :headers, updated_at = :updated_at
WHERE id = :id;

-- name: webhook_reset_health
UPDATE webhooks
SET avg_response_time = 0, response_samples = 0, last_response_time = 0,
    errors_since_last_success = 0, consecutive_failures = 0, last_success_at = NULL
WHERE id = :id;

-- name: webhook_rotate_secret
UPDATE webhooks SET secret = :secret, previous_secrets = :previous_secrets, updated_at = :now
WHERE id = :id AND organization_id = :organization_id AND deleted_at IS NULL;

-- name: webhooks_with_previous_secrets
SELECT id, previous_secrets FROM webhooks WHERE previous_secrets <> '[]';

-- name: webhook_previous_secrets_set
-- Unless a rotation changed them since they were read.
UPDATE webhooks SET previous_secrets = :new WHERE id = :id AND previous_secrets = :old;

-- name: webhook_delete
UPDATE webhooks SET deleted_at = :now, updated_at = :now
WHERE id = :id AND organization_id = :organization_id AND deleted_at IS NULL;

-- name: webhooks_active
-- The fan-out targets of a publish on SQLite, topics filtered in Python (PostgreSQL's
-- publish statement finds its targets itself).
SELECT id, topics FROM webhooks
WHERE organization_id = :organization_id AND status = 'active' AND deleted_at IS NULL;

-- name: idempotency_claim
-- Takes the key for this request unless a live (younger than 24 h) entry holds it.
INSERT INTO idempotency_keys (organization_id, key, event_id, created_at)
VALUES (:organization_id, :key, :event_id, :created_at)
ON CONFLICT (organization_id, key) DO UPDATE
SET event_id = excluded.event_id, created_at = excluded.created_at
WHERE idempotency_keys.created_at < :expired_before;

-- name: idempotency_get
SELECT e.id, e.topic, e.created_at FROM idempotency_keys i JOIN events e ON e.id = i.event_id
WHERE i.organization_id = :organization_id AND i.key = :key;

-- name: idempotency_purge
DELETE FROM idempotency_keys WHERE created_at < :before;

-- name: event_insert
INSERT INTO events (id, organization_id, topic, data, conversation_id, conversation_url, is_test, created_at,
                    traceparent)
VALUES (:id, :organization_id, :topic, :data, :conversation_id, :conversation_url, :is_test, :created_at,
        :traceparent);

-- name: event_get
SELECT * FROM events WHERE id = :id;

-- name: event_list
-- An organization's published events, newest first, by id: an event id starts with its
-- created_at (a UUIDv7), so the time window and the cursor are exactly the id range
-- [:low, :before), one range of ix_events_organization_list. (A created_at condition beside
-- it would only mislead the planner, which takes the two for independent.)
SELECT id, topic, created_at FROM events
WHERE organization_id = :organization_id AND NOT is_test AND id < :before AND id >= :low
ORDER BY id DESC LIMIT :limit;

-- name: event_list_topic
-- The same for one topic, one range of ix_events_organization_topic.
SELECT id, topic, created_at FROM events
WHERE organization_id = :organization_id AND topic = :topic AND NOT is_test
  AND id < :before AND id >= :low
ORDER BY id DESC LIMIT :limit;

-- name: custom_plans
-- SQLite plans every statement anew.
SELECT 1;

-- name: event_get_in_org
SELECT * FROM events WHERE id = :id AND organization_id = :organization_id;

-- name: event_deliveries
-- Every delivery of an event to a webhook of the organization, oldest first, with whether
-- its webhook is active (a paused or suspended webhook's deliveries are held).
SELECT d.*, w.status AS webhook_status FROM deliveries d JOIN webhooks w ON w.id = d.webhook_id
WHERE d.event_id = :event_id AND w.organization_id = :organization_id AND w.deleted_at IS NULL
ORDER BY d.id;

-- name: events_after
-- The organization's published events after an id, oldest first (a stream's resumption).
SELECT * FROM events WHERE organization_id = :organization_id AND NOT is_test AND id > :after
ORDER BY id LIMIT :limit;

-- name: delivery_insert
INSERT INTO deliveries (id, webhook_id, event_id, topic, is_test, status, attempt_count,
                        next_attempt_at, created_at)
VALUES (:id, :webhook_id, :event_id, :topic, :is_test, 'pending', 0, :next_attempt_at, :created_at);

-- name: delivery_get
SELECT * FROM deliveries WHERE id = :id AND webhook_id = :webhook_id;

-- name: delivery_list
SELECT * FROM deliveries WHERE webhook_id = :webhook_id AND status = :status AND id < :before
ORDER BY id DESC LIMIT :limit;

-- name: delivery_list_event
-- A webhook's deliveries of one event (ix_deliveries_event): a few rows, sorted here.
SELECT * FROM deliveries WHERE event_id = :event_id AND webhook_id = :webhook_id AND id < :before
  AND (status = :status OR :status IS NULL)
ORDER BY id DESC LIMIT :limit;

-- name: delivery_attempts
SELECT * FROM attempts WHERE delivery_id = :delivery_id ORDER BY attempt_number, id;

-- name: delivery_retry
-- Queue a delivery to be attempted now. One with an attempt under way keeps its lease, and
-- is marked so that settling that attempt queues the retry instead of overwriting it.
UPDATE deliveries SET status = 'pending', next_attempt_at = :now,
                      retry_requested = (lease_until IS NOT NULL)
WHERE id = :id AND webhook_id = :webhook_id AND status <> 'cancelled';

-- name: deliveries_cancel
UPDATE deliveries SET status = 'cancelled', next_attempt_at = NULL
WHERE webhook_id = :webhook_id AND status = 'pending';

-- name: workers_lock
-- Workers change their shares one at a time (see queue.beat); SQLite's one writer already
-- makes them take turns.
SELECT 1;

-- name: workers_all
-- Every worker's row, and whether its heartbeat is recent (within :timeout ms).
SELECT id, webhook_share, org_share, stopping, heartbeat_at >= :now - :timeout AS fresh
FROM workers ORDER BY id;

-- name: worker_beat
INSERT INTO workers (id, started_at, heartbeat_at, webhook_share, org_share, stopping)
VALUES (:id, :now, :now, :webhook_share, :org_share, :stopping)
ON CONFLICT (id) DO UPDATE
SET heartbeat_at = excluded.heartbeat_at, webhook_share = excluded.webhook_share,
    org_share = excluded.org_share, stopping = excluded.stopping;

-- name: worker_remove
DELETE FROM workers WHERE id = :id;

-- name: queue_release_worker
-- A dead worker's deliveries go back to the queue (its lease tokens begin with :prefix).
UPDATE deliveries SET lease_until = NULL, lease_token = NULL
WHERE lease_until IS NOT NULL AND substr(lease_token, 1, length(:prefix)) = :prefix;

-- name: queue_heads
-- Each webhook with claimable deliveries, with its organization, its earliest due time and
-- that of its retries and test deliveries (the view is defined in migration 0003). Not
-- filtered here: a WHERE on head would compute it twice per webhook.
SELECT webhook_id, organization_id, timeout_ms, active, head, urgent FROM queue_heads;

-- name: queue_next_due
-- When the next claimable delivery falls due.
SELECT min(head) FROM queue_heads;

-- name: queue_release
-- Give back a claimed delivery unattempted (graceful shutdown).
UPDATE deliveries SET lease_until = NULL, lease_token = NULL
WHERE id = :id AND lease_token = :token;

-- name: queue_release_expired
-- Deliveries whose worker died go back to the queue once their lease is over.
UPDATE deliveries SET lease_until = NULL, lease_token = NULL WHERE lease_until < :now;

-- name: purge_deliveries_batch
SELECT id FROM deliveries WHERE id < :before_id AND lease_until IS NULL ORDER BY id LIMIT :limit;

-- name: purge_events_batch
SELECT e.id FROM events e
WHERE e.created_at < :before
  AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.event_id = e.id)
ORDER BY e.created_at LIMIT :limit;

-- name: recover_lock
-- SQLite's one writer already makes recoveries take turns.
SELECT 1;

-- ---- Dashboard rollups (hookd.store.rollups) --------------------------------------

-- name: rollup_totals
-- The rollups of some webhooks (a page of the dashboard's list) since :since, summed per
-- webhook: 24 rows of each for a day, read in key order (no sort for the GROUP BY).
SELECT webhook_id, sum(attempts) AS attempts, sum(successes) AS successes,
       sum(failures) AS failures, sum(time_sum) AS time_sum,
       sum(b00) AS b00, sum(b01) AS b01, sum(b02) AS b02, sum(b03) AS b03, sum(b04) AS b04,
       sum(b05) AS b05, sum(b06) AS b06, sum(b07) AS b07, sum(b08) AS b08, sum(b09) AS b09,
       sum(b10) AS b10, sum(b11) AS b11, sum(b12) AS b12, sum(b13) AS b13, sum(b14) AS b14,
       sum(b15) AS b15, sum(b16) AS b16, sum(b17) AS b17, sum(b18) AS b18, sum(b19) AS b19,
       sum(b20) AS b20, sum(b21) AS b21, sum(b22) AS b22, sum(b23) AS b23
FROM webhook_rollups
WHERE webhook_id IN (SELECT value FROM json_each(:ids)) AND hour >= :since
GROUP BY webhook_id;

-- name: rollup_series
-- One webhook's hourly rollups since :since, oldest first.
SELECT * FROM webhook_rollups WHERE webhook_id = :webhook_id AND hour >= :since ORDER BY hour;

-- name: rollup_purge
DELETE FROM webhook_rollups WHERE hour < :before;

-- ---- Dashboard sessions and portal links (hookd.store.sessions) ------------------------

-- name: session_insert
INSERT INTO dashboard_sessions (id, organization_id, key_id, webhook_ids, read_only, csrf_token,
                                created_at, expires_at)
VALUES (:id, :organization_id, :key_id, :webhook_ids, :read_only, :csrf_token, :now, :expires_at);

-- name: session_get
-- A live session: not expired, and its API key not revoked.
SELECT s.id, s.organization_id, s.key_id, s.webhook_ids, s.read_only, s.csrf_token,
       s.expires_at, o.name AS organization_name
FROM dashboard_sessions s
JOIN api_keys k ON k.id = s.key_id AND k.revoked_at IS NULL
JOIN organizations o ON o.id = s.organization_id
WHERE s.id = :id AND s.expires_at > :now;

-- name: session_delete
DELETE FROM dashboard_sessions WHERE id = :id;

-- name: portal_link_insert
INSERT INTO portal_links (id, organization_id, key_id, webhook_ids, read_only, created_at,
                          expires_at, used_at)
VALUES (:id, :organization_id, :key_id, :webhook_ids, :read_only, :now, :expires_at, NULL);

-- name: portal_link_use
-- Marks a live, unused link used; it changes one row only for the first request.
UPDATE portal_links SET used_at = :now
WHERE id = :id AND used_at IS NULL AND expires_at > :now;

-- name: portal_link_get
SELECT organization_id, key_id, webhook_ids, read_only, expires_at FROM portal_links
WHERE id = :id;

-- name: sessions_purge
DELETE FROM dashboard_sessions WHERE expires_at < :now;

-- name: portal_links_purge
DELETE FROM portal_links WHERE expires_at < :now;
-- name: metrics_queue
-- The waiting deliveries of each webhook that has any, for the hookd_deliveries and
-- hookd_delivery_lag_seconds gauges (hookd.store.gauges): how many, how many are due at
-- :now, and the earliest due time. One walk of ix_deliveries_queue (its columns are all
-- it reads), grouped by webhook; only the webhooks with work are joined.
SELECT q.webhook_id, w.status, q.waiting, q.due, q.earliest
FROM (SELECT webhook_id, count(*) AS waiting,
             sum(CASE WHEN next_attempt_at <= :now THEN 1 ELSE 0 END) AS due,
             min(next_attempt_at) AS earliest
      FROM deliveries WHERE status = 'pending' AND lease_until IS NULL
      GROUP BY webhook_id) q
JOIN webhooks w ON w.id = q.webhook_id;

-- name: metrics_queue_tests
-- The same for waiting test deliveries (ix_deliveries_tests): a paused or suspended
-- webhook still sends those, so they are due or scheduled, never held.
SELECT webhook_id, count(*) AS waiting,
       sum(CASE WHEN next_attempt_at <= :now THEN 1 ELSE 0 END) AS due,
       min(next_attempt_at) AS earliest
FROM deliveries WHERE is_test AND status = 'pending' AND lease_until IS NULL
GROUP BY webhook_id;

-- name: metrics_in_flight
-- Deliveries leased to a worker (ix_deliveries_leased).
SELECT count(*) FROM deliveries WHERE lease_until IS NOT NULL;

-- name: metrics_webhooks
SELECT status, count(*) AS n FROM webhooks WHERE deleted_at IS NULL GROUP BY status;
