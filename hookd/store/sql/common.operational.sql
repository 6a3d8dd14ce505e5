-- Operational events (SPEC §4, hookd/store/operational.py): the statements that bracket a
-- settle which may suspend a webhook or fail a delivery, in its transaction. SQLite's
-- versions (lists as JSON text); PostgreSQL's are in postgres.operational.sql.

-- name: operational_lock_webhooks
-- The batch's webhooks and their status before the settle. SQLite's one writer already
-- keeps them as they are until the settle's transaction ends.
SELECT id, status FROM webhooks WHERE id IN (SELECT value FROM json_each(:ids)) ORDER BY id;

-- name: operational_pending_deliveries
-- The batch's deliveries that may end failed, still pending before the settle.
SELECT id FROM deliveries
WHERE id IN (SELECT value FROM json_each(:ids)) AND status = 'pending' AND NOT is_test;

-- name: operational_suspended
SELECT * FROM webhooks
WHERE id IN (SELECT value FROM json_each(:ids)) AND status = 'suspended' AND deleted_at IS NULL;

-- name: operational_failed
SELECT d.*, w.organization_id FROM deliveries d JOIN webhooks w ON w.id = d.webhook_id
WHERE d.id IN (SELECT value FROM json_each(:ids)) AND d.status = 'failed' ORDER BY d.id;

-- name: operational_targets
-- The fan-out targets of operational events: topics are filtered in Python.
SELECT id, organization_id, topics FROM webhooks
WHERE organization_id IN (SELECT value FROM json_each(:organization_ids))
  AND status = 'active' AND deleted_at IS NULL;
