-- SQLite's versions of queries whose SQL differs, and the queries only SQLite uses.
-- One writer thread runs every write, so no row locks are needed: writes are serial.
-- Lists are passed as JSON text and read with json_each.

-- name: api_key_holds
-- A publish by a key that the API process authenticated before checks it in its own
-- transaction (hookd.store.events.KeyCheck): still live, of the organization, whose default
-- version is still the one the request was answered with.
SELECT 1 FROM api_keys k JOIN organizations o ON o.id = k.organization_id
WHERE k.key_hash = :key_hash AND k.revoked_at IS NULL
  AND o.id = :organization_id AND o.default_version IS :default_version;

-- name: queue_leased
-- Attempts under way per webhook, with its organization: every worker's (the caps), and
-- this worker's (its shares; its lease tokens begin with :mine).
SELECT d.webhook_id, w.organization_id, count(*) AS n,
       sum(substr(d.lease_token, 1, length(:mine)) = :mine) AS m
FROM deliveries d JOIN webhooks w ON w.id = d.webhook_id
WHERE d.lease_until IS NOT NULL GROUP BY d.webhook_id;

-- name: queue_take
-- Lease up to :n due deliveries of one active webhook, oldest first.
UPDATE deliveries SET lease_until = :lease_until, lease_token = :token
WHERE id IN (SELECT id FROM deliveries
             WHERE webhook_id = :webhook_id AND status = 'pending' AND lease_until IS NULL
               AND next_attempt_at <= :now
             ORDER BY next_attempt_at LIMIT :n)
RETURNING id, webhook_id, event_id, topic, is_test, attempt_count, lease_until;

-- name: queue_take_urgent
-- Lease up to :n due retries and test deliveries of one active webhook, oldest first.
UPDATE deliveries SET lease_until = :lease_until, lease_token = :token
WHERE id IN (SELECT id FROM deliveries
             WHERE webhook_id = :webhook_id AND status = 'pending' AND lease_until IS NULL
               AND (attempt_count > 0 OR is_test) AND next_attempt_at <= :now
             ORDER BY next_attempt_at LIMIT :n)
RETURNING id, webhook_id, event_id, topic, is_test, attempt_count, lease_until;

-- name: queue_take_tests
-- Lease up to :n due test deliveries of one paused or suspended webhook, oldest first
-- (through their own index: ix_deliveries_urgent would walk its held retries too).
UPDATE deliveries SET lease_until = :lease_until, lease_token = :token
WHERE id IN (SELECT id FROM deliveries INDEXED BY ix_deliveries_tests
             WHERE webhook_id = :webhook_id AND is_test AND status = 'pending'
               AND lease_until IS NULL AND next_attempt_at <= :now
             ORDER BY next_attempt_at LIMIT :n)
RETURNING id, webhook_id, event_id, topic, is_test, attempt_count, lease_until;

-- name: claim_events
-- The events of a claim's deliveries, each once (a fan-out's deliveries share theirs).
SELECT id AS event_id, data, created_at AS event_created_at, conversation_id, conversation_url,
       traceparent
FROM events WHERE id IN (SELECT value FROM json_each(:ids));

-- name: claim_webhooks
-- The webhooks of a claim's deliveries, each once.
SELECT id AS webhook_id, organization_id, url, secret, previous_secrets, headers, timeout_ms
FROM webhooks WHERE id IN (SELECT value FROM json_each(:ids));

-- name: recover_page
-- The next page of a recovery window, and for each event whether the webhook lacks a
-- succeeded or pending delivery of it. The page is chosen first, so the check is one index
-- look-up per event of the page, never a scan of the webhook's whole history.
WITH page AS (
    SELECT e.id, e.topic, e.created_at FROM events e
    WHERE e.organization_id = :organization_id AND e.created_at >= :since AND e.created_at < :until
      AND NOT e.is_test AND e.topic IN (SELECT value FROM json_each(:topics))
      AND (e.created_at > :after_at OR (e.created_at = :after_at AND e.id > :after_id))
    ORDER BY e.created_at, e.id LIMIT :limit
)
SELECT p.id, p.topic, p.created_at,
       NOT EXISTS (SELECT 1 FROM deliveries d
                   WHERE d.event_id = p.id AND d.webhook_id = :webhook_id
                     AND d.status IN ('succeeded', 'pending')) AS missing
FROM page p ORDER BY p.created_at, p.id;

-- name: purge_attempts
DELETE FROM attempts WHERE delivery_id IN (SELECT value FROM json_each(:ids));

-- name: purge_deliveries
DELETE FROM deliveries WHERE id IN (SELECT value FROM json_each(:ids));

-- name: purge_events
DELETE FROM events WHERE id IN (SELECT value FROM json_each(:ids));

-- name: outcome_webhook
-- One batch's attempts to one webhook, folded in Python into these parameters (see
-- hookd.delivery.health). Every expression reads the row as it was, so concurrent batches
-- from several workers each apply on top of the other without losing an update.
UPDATE webhooks
SET last_status_code = CASE WHEN coalesce(last_status_at, 0) <= :last_at THEN :last_code ELSE last_status_code END,
    last_status_message = CASE WHEN coalesce(last_status_at, 0) <= :last_at THEN :last_message ELSE last_status_message END,
    last_response_time = CASE WHEN coalesce(last_status_at, 0) <= :last_at THEN :last_response_time ELSE last_response_time END,
    last_status_at = CASE WHEN coalesce(last_status_at, 0) <= :last_at THEN :last_at ELSE last_status_at END,
    avg_response_time = CASE WHEN response_samples = 0 THEN :fresh_avg
                             ELSE avg_response_time * :decay + :contribution END,
    response_samples = response_samples + :samples,
    errors_since_last_success = CASE WHEN :attempt_succeeded THEN :errors_after
                                     ELSE errors_since_last_success + :errors_after END,
    consecutive_failures = CASE WHEN :delivery_succeeded THEN :failures_after
                                ELSE consecutive_failures + :failures_after END,
    last_success_at = CASE WHEN :success_at > coalesce(last_success_at, -1) THEN :success_at
                           ELSE last_success_at END,
    status = CASE WHEN status = 'active'
                   AND (CASE WHEN :delivery_succeeded THEN :failures_after
                             ELSE consecutive_failures + :failures_after END) >= :suspend_after
                  THEN 'suspended' ELSE status END
WHERE id = :id;

-- name: outcome_delivery
-- Only the lease holder settles a delivery; a cancelled one stays cancelled.
-- A retry asked for while the attempt was under way is queued now (retry_requested).
UPDATE deliveries
SET status = CASE WHEN retry_requested THEN 'pending' ELSE :status END,
    next_attempt_at = CASE WHEN retry_requested THEN :attempted_at ELSE :next_attempt_at END,
    retry_requested = FALSE, attempt_count = :attempt_count,
    lease_until = NULL, lease_token = NULL, last_attempt_at = :attempted_at,
    last_status_code = :status_code, last_status_message = :status_message
WHERE id = :id AND status = 'pending'
  AND (lease_token = :token OR (lease_token IS NULL AND attempt_count = :attempt_count - 1));

-- name: outcome_attempt
INSERT OR IGNORE INTO attempts (id, delivery_id, webhook_id, attempt_number, attempted_at, succeeded,
                      status_code, response_time_ms, response_body, error)
VALUES (:id, :delivery_id, :webhook_id, :attempt_number, :attempted_at, :succeeded,
        :status_code, :response_time_ms, :response_body, :error);

-- name: events_by_ids
SELECT * FROM events WHERE id IN (SELECT value FROM json_each(:ids));

-- name: metrics_queue_tests
-- Waiting test deliveries per webhook, for the hookd_deliveries gauge (see common.sql),
-- through their own index: SQLite, without statistics, would walk ix_deliveries_urgent and
-- every waiting retry with it.
SELECT webhook_id, count(*) AS waiting,
       sum(CASE WHEN next_attempt_at <= :now THEN 1 ELSE 0 END) AS due,
       min(next_attempt_at) AS earliest
FROM deliveries INDEXED BY ix_deliveries_tests
WHERE is_test AND status = 'pending' AND lease_until IS NULL
GROUP BY webhook_id;

-- ---- Dashboard rollups (hookd.store.rollups) --------------------------------------

-- name: rollup_add
-- Hourly rollups of a settle batch's attempts (hookd.store.rollups), written in the settle's
-- transaction before its attempts, one row per webhook and hour folded in Python (PostgreSQL's
-- settle statement writes them itself). Nothing is added when the batch's first attempt is
-- already recorded: a batch written twice (its first answer was lost) counts once.
INSERT INTO webhook_rollups (webhook_id, hour, attempts, successes, failures, time_sum, b00, b01, b02, b03, b04, b05, b06, b07, b08, b09, b10, b11, b12, b13, b14, b15, b16, b17, b18, b19, b20, b21, b22, b23)
SELECT :webhook_id, :hour, :attempts, :successes, :failures, :time_sum,
       :b00, :b01, :b02, :b03, :b04, :b05, :b06, :b07, :b08, :b09, :b10, :b11, :b12, :b13, :b14, :b15, :b16, :b17, :b18, :b19, :b20, :b21, :b22, :b23
WHERE NOT EXISTS (SELECT 1 FROM attempts WHERE id = :first_attempt)
ON CONFLICT (webhook_id, hour) DO UPDATE SET
    attempts = webhook_rollups.attempts + excluded.attempts,
    successes = webhook_rollups.successes + excluded.successes,
    failures = webhook_rollups.failures + excluded.failures,
    time_sum = webhook_rollups.time_sum + excluded.time_sum,
    b00 = webhook_rollups.b00 + excluded.b00,
    b01 = webhook_rollups.b01 + excluded.b01,
    b02 = webhook_rollups.b02 + excluded.b02,
    b03 = webhook_rollups.b03 + excluded.b03,
    b04 = webhook_rollups.b04 + excluded.b04,
    b05 = webhook_rollups.b05 + excluded.b05,
    b06 = webhook_rollups.b06 + excluded.b06,
    b07 = webhook_rollups.b07 + excluded.b07,
    b08 = webhook_rollups.b08 + excluded.b08,
    b09 = webhook_rollups.b09 + excluded.b09,
    b10 = webhook_rollups.b10 + excluded.b10,
    b11 = webhook_rollups.b11 + excluded.b11,
    b12 = webhook_rollups.b12 + excluded.b12,
    b13 = webhook_rollups.b13 + excluded.b13,
    b14 = webhook_rollups.b14 + excluded.b14,
    b15 = webhook_rollups.b15 + excluded.b15,
    b16 = webhook_rollups.b16 + excluded.b16,
    b17 = webhook_rollups.b17 + excluded.b17,
    b18 = webhook_rollups.b18 + excluded.b18,
    b19 = webhook_rollups.b19 + excluded.b19,
    b20 = webhook_rollups.b20 + excluded.b20,
    b21 = webhook_rollups.b21 + excluded.b21,
    b22 = webhook_rollups.b22 + excluded.b22,
    b23 = webhook_rollups.b23 + excluded.b23;
