-- PostgreSQL's versions of queries whose SQL differs, and the queries only PostgreSQL uses.
-- Lists are passed as arrays.

-- name: org_lock
SELECT id, webhook_limit FROM organizations WHERE id = :id FOR UPDATE;

-- name: webhook_get_locked
SELECT * FROM webhooks WHERE id = :id AND organization_id = :organization_id AND deleted_at IS NULL
FOR UPDATE;

-- name: auth_counted
-- Authenticate and count the request in the key's current window, in one round trip.
WITH k AS (
    SELECT k.id AS key_id, k.revoked_at, o.id AS org_id, o.name AS org_name,
           o.webhook_limit, o.default_version, o.created_at AS org_created_at
    FROM api_keys k JOIN organizations o ON o.id = k.organization_id
    WHERE k.key_hash = :key_hash
), counted AS (
    INSERT INTO rate_counters (key_id, window_start, count)
    SELECT key_id, :window_start, 1 FROM k WHERE revoked_at IS NULL
    ON CONFLICT (key_id, window_start) DO UPDATE SET count = rate_counters.count + 1
    RETURNING count
)
SELECT k.*, (SELECT count FROM counted) AS request_count FROM k;

-- name: cycle_settings
-- A worker's transaction need not wait for the disk: if the server lost it in a crash, the
-- deliveries it settled or leased are simply sent again (delivery is at least once), and
-- nothing a client was told depends on it. The claim's plan does not depend on its
-- parameters, so it is planned once per connection, not on every call.
SET LOCAL synchronous_commit = off; SET LOCAL plan_cache_mode = force_generic_plan;

-- name: claim
-- Lease due deliveries: for each active webhook, up to this worker's free lease slots (and
-- within the slots of all workers together), oldest webhooks' work first, at most
-- :capacity in all; and test deliveries to webhooks that are not active (active ones come
-- through the queue). Returns what the sender needs.
WITH inflight AS (
    SELECT webhook_id, count(*) AS n, count(*) FILTER (WHERE lease_token LIKE :mine) AS m
    FROM deliveries WHERE lease_until IS NOT NULL GROUP BY webhook_id
), slots AS (
    SELECT h.webhook_id AS id, h.timeout_ms, h.head,
           LEAST(:max_leased - coalesce(i.n, 0), :my_leased - coalesce(i.m, 0)) AS free
    FROM queue_heads h LEFT JOIN inflight i ON i.webhook_id = h.webhook_id
    WHERE h.head <= :now AND coalesce(i.n, 0) < :max_leased AND coalesce(i.m, 0) < :my_leased
), queued AS (
    SELECT d.id, s.timeout_ms
    FROM slots s
    CROSS JOIN LATERAL (
        SELECT q.id FROM deliveries q
        WHERE q.webhook_id = s.id AND q.status = 'pending' AND q.lease_until IS NULL
          AND q.next_attempt_at <= :now
        ORDER BY q.next_attempt_at LIMIT s.free
        FOR UPDATE SKIP LOCKED
    ) d
    ORDER BY s.head
    LIMIT :capacity
), tests AS (
    SELECT d.id, w.timeout_ms FROM deliveries d JOIN webhooks w ON w.id = d.webhook_id
    WHERE d.is_test AND d.status = 'pending' AND d.lease_until IS NULL AND d.next_attempt_at <= :now
      AND w.status <> 'active' AND w.deleted_at IS NULL
    ORDER BY d.next_attempt_at LIMIT :capacity
    FOR UPDATE OF d SKIP LOCKED
), picked AS (
    SELECT id, timeout_ms FROM queued
    UNION ALL
    (SELECT id, timeout_ms FROM tests LIMIT greatest(0, :capacity - (SELECT count(*) FROM queued)))
)
UPDATE deliveries d
SET lease_until = :now + p.timeout_ms * :depth + :margin, lease_token = :token
FROM picked p, events e, webhooks w
WHERE d.id = p.id AND e.id = d.event_id AND w.id = d.webhook_id
RETURNING d.id, d.webhook_id, d.event_id, d.topic, d.is_test, d.attempt_count, d.lease_until,
          e.data, e.created_at AS event_created_at, e.conversation_id, e.conversation_url,
          w.organization_id, w.url, w.secret, w.headers, w.timeout_ms;

-- name: recover_candidates
SELECT e.id, e.topic FROM events e
WHERE e.organization_id = :organization_id AND e.created_at >= :since AND e.created_at < :until
  AND NOT e.is_test AND e.topic = ANY(:topics)
  AND NOT EXISTS (SELECT 1 FROM deliveries d
                  WHERE d.event_id = e.id AND d.webhook_id = :webhook_id
                    AND d.status IN ('succeeded', 'pending'))
ORDER BY e.created_at, e.id LIMIT :limit;

-- name: purge_attempts
DELETE FROM attempts WHERE delivery_id = ANY(:ids);

-- name: purge_deliveries
DELETE FROM deliveries WHERE id = ANY(:ids);

-- name: purge_events
DELETE FROM events WHERE id = ANY(:ids);

-- name: delivery_insert
-- batch: columns
INSERT INTO deliveries (id, webhook_id, event_id, topic, is_test, status, attempt_count,
                        next_attempt_at, created_at)
SELECT id, webhook_id, event_id, topic, is_test, 'pending', 0, next_attempt_at, created_at
FROM unnest(:id::text[], :webhook_id::text[], :event_id::text[], :topic::text[], :is_test::bool[],
            :next_attempt_at::bigint[], :created_at::bigint[])
     AS u(id, webhook_id, event_id, topic, is_test, next_attempt_at, created_at);

-- name: outcome_attempt
-- batch: columns
INSERT INTO attempts (id, delivery_id, webhook_id, attempt_number, attempted_at, succeeded,
                      status_code, response_time_ms, response_body, error)
SELECT * FROM unnest(:id::text[], :delivery_id::text[], :webhook_id::text[], :attempt_number::int[],
                     :attempted_at::bigint[], :succeeded::bool[], :status_code::int[],
                     :response_time_ms::int[], :response_body::bytea[], :error::text[]);

-- name: outcome_delivery
-- batch: columns
-- Only the lease holder settles a delivery; a cancelled one stays cancelled.
UPDATE deliveries d
SET status = u.status, attempt_count = u.attempt_count, next_attempt_at = u.next_attempt_at,
    lease_until = NULL, lease_token = NULL, last_attempt_at = u.attempted_at,
    last_status_code = u.status_code, last_status_message = u.status_message
FROM unnest(:id::text[], :token::text[], :status::text[], :attempt_count::int[],
            :next_attempt_at::bigint[], :attempted_at::bigint[], :status_code::int[],
            :status_message::text[])
     AS u(id, token, status, attempt_count, next_attempt_at, attempted_at, status_code, status_message)
WHERE d.id = u.id AND d.lease_token = u.token AND d.status = 'pending';
