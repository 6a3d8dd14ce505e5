-- Operational events (SPEC §4, hookd/store/operational.py): PostgreSQL's versions of the
-- statements in common.operational.sql. Lists are passed as arrays.

-- name: operational_lock_webhooks
-- The batch's webhooks, locked in id order as the settle statement locks them (so it finds
-- them held already), and their status before the settle.
SELECT id, status FROM webhooks WHERE id = ANY(:ids::text[]) ORDER BY id FOR NO KEY UPDATE;

-- name: operational_pending_deliveries
SELECT id FROM deliveries WHERE id = ANY(:ids::text[]) AND status = 'pending' AND NOT is_test;

-- name: operational_suspended
SELECT * FROM webhooks
WHERE id = ANY(:ids::text[]) AND status = 'suspended' AND deleted_at IS NULL;

-- name: operational_failed
SELECT d.*, w.organization_id FROM deliveries d JOIN webhooks w ON w.id = d.webhook_id
WHERE d.id = ANY(:ids::text[]) AND d.status = 'failed' ORDER BY d.id;

-- name: operational_targets
SELECT id, organization_id, topics FROM webhooks
WHERE organization_id = ANY(:organization_ids::text[]) AND status = 'active' AND deleted_at IS NULL;
