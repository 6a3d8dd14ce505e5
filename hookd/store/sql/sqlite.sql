-- SQLite's versions of queries whose SQL differs, and the queries only SQLite uses.
-- One writer thread runs every write, so no row locks are needed: writes are serial.
-- Lists are passed as JSON text and read with json_each.

-- name: queue_take
-- Lease up to :n due deliveries of one webhook, oldest first.
UPDATE deliveries SET lease_until = :lease_until, lease_token = :token
WHERE id IN (SELECT id FROM deliveries
             WHERE webhook_id = :webhook_id AND status = 'pending' AND lease_until IS NULL
               AND next_attempt_at <= :now
             ORDER BY next_attempt_at LIMIT :n)
RETURNING id;

-- name: queue_take_tests
-- Test deliveries to webhooks that are not active (active ones go through the queue).
SELECT d.id, w.timeout_ms FROM deliveries d JOIN webhooks w ON w.id = d.webhook_id
WHERE d.is_test AND d.status = 'pending' AND d.lease_until IS NULL AND d.next_attempt_at <= :now
  AND w.status <> 'active' AND w.deleted_at IS NULL
ORDER BY d.next_attempt_at LIMIT :n;

-- name: queue_lease
UPDATE deliveries SET lease_until = :lease_until, lease_token = :token WHERE id = :id;

-- name: claim_details
SELECT d.id, d.webhook_id, d.event_id, d.topic, d.is_test, d.attempt_count, d.lease_until,
       e.data, e.created_at AS event_created_at, e.conversation_id, e.conversation_url,
       w.organization_id, w.url, w.secret, w.headers, w.timeout_ms
FROM deliveries d JOIN events e ON e.id = d.event_id JOIN webhooks w ON w.id = d.webhook_id
WHERE d.id IN (SELECT value FROM json_each(:ids));

-- name: recover_candidates
SELECT e.id, e.topic FROM events e
WHERE e.organization_id = :organization_id AND e.created_at >= :since AND e.created_at < :until
  AND NOT e.is_test AND e.topic IN (SELECT value FROM json_each(:topics))
  AND NOT EXISTS (SELECT 1 FROM deliveries d
                  WHERE d.event_id = e.id AND d.webhook_id = :webhook_id
                    AND d.status IN ('succeeded', 'pending'))
ORDER BY e.created_at, e.id LIMIT :limit;

-- name: purge_attempts
DELETE FROM attempts WHERE delivery_id IN (SELECT value FROM json_each(:ids));

-- name: purge_deliveries
DELETE FROM deliveries WHERE id IN (SELECT value FROM json_each(:ids));

-- name: purge_events
DELETE FROM events WHERE id IN (SELECT value FROM json_each(:ids));
