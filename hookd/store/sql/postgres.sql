-- PostgreSQL's versions of queries whose SQL differs, and the queries only PostgreSQL uses.
-- Lists are passed as arrays.

-- name: org_lock
SELECT id, webhook_limit, webhook_count FROM organizations WHERE id = :id FOR UPDATE;

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

-- name: claim
-- Lease due deliveries for one worker, at most :capacity, in one statement:
-- * within the caps: per webhook at most :max_leased leased by every worker together and
--   :my_leased by this one (its share, see hookd/delivery/worker.py), per organization at
--   most :org_max and :org_mine; the leases of every worker count (:mine is the prefix of
--   this worker's lease tokens);
-- * fairly: each free slot goes where it raises the fewest attempts under way: within an
--   organization, slots are numbered over its webhooks by how many each would then have
--   (ties: the oldest work first); across organizations likewise, by how many the
--   organization would then have. A backlog of one organization never holds back the due
--   deliveries of another, nor a busy webhook a quiet one, in one claim or over many;
-- * cheaply: when every free slot fits (within :capacity and each organization's room),
--   there is nothing to choose and every webhook gets its free slots (fits). Otherwise only
--   the webhooks whose first free slot is among their organization's first `room` turns
--   are numbered slot by slot: another's first slot, and so all its slots, come too late;
-- * per webhook, up to half of its slots go to due retries and test deliveries (urgent),
--   the rest to the oldest due deliveries of any kind; a paused or suspended webhook only
--   sends its test deliveries.
-- Returns what the sender needs.
WITH leased AS (
    SELECT d.webhook_id, count(*) AS n,
           count(*) FILTER (WHERE starts_with(d.lease_token, :mine)) AS m
    FROM deliveries d WHERE d.lease_until IS NOT NULL GROUP BY d.webhook_id
), org_leased AS (
    SELECT w.organization_id, sum(l.n) AS n, sum(l.m) AS m
    FROM leased l JOIN webhooks w ON w.id = l.webhook_id GROUP BY w.organization_id
), heads AS (
    SELECT h.webhook_id, h.organization_id, h.active, h.urgent <= :now AS urgent, h.head,
           coalesce(l.n, 0) AS n,
           LEAST(:max_leased - coalesce(l.n, 0), :my_leased - coalesce(l.m, 0), :capacity) AS free
    FROM queue_heads h LEFT JOIN leased l ON l.webhook_id = h.webhook_id
    WHERE h.head <= :now
), open AS MATERIALIZED (
    SELECT h.*, coalesce(o.n, 0) AS org_n,
           LEAST(:org_max - coalesce(o.n, 0), :org_mine - coalesce(o.m, 0), :capacity) AS room,
           row_number() OVER (PARTITION BY h.organization_id
                              ORDER BY h.n, h.head, h.webhook_id) AS first_turn,
           sum(h.free) OVER (PARTITION BY h.organization_id) AS wanted
    FROM heads h LEFT JOIN org_leased o ON o.organization_id = h.organization_id
    WHERE h.free > 0
), fits AS (
    SELECT coalesce(sum(free) <= :capacity AND bool_and(wanted <= room), true) AS ok FROM open
), slots AS (
    SELECT o.webhook_id, o.active, o.urgent, o.head, o.org_n, o.room,
           row_number() OVER (PARTITION BY o.organization_id
                              ORDER BY o.n + k.k, o.head, o.webhook_id) AS turn
    FROM open o CROSS JOIN LATERAL generate_series(1, LEAST(o.free, o.room)) AS k(k)
    WHERE o.first_turn <= o.room AND NOT (SELECT ok FROM fits)
), granted AS (
    SELECT o.webhook_id, o.active, coalesce(o.urgent, false) AS urgent, o.free AS take
    FROM open o WHERE (SELECT ok FROM fits)
    UNION ALL
    SELECT s.webhook_id, s.active, coalesce(s.urgent, false) AS urgent, count(*) AS take
    FROM (SELECT s.* FROM slots s WHERE s.turn <= s.room
          ORDER BY s.org_n + s.turn, s.head LIMIT :capacity) s
    GROUP BY s.webhook_id, s.active, s.urgent
), picked AS (
    SELECT d.id
    FROM granted g
    CROSS JOIN LATERAL (
        WITH urgent AS (
            SELECT q.id FROM deliveries q
            WHERE g.active AND g.urgent AND q.webhook_id = g.webhook_id
              AND q.status = 'pending' AND q.lease_until IS NULL
              AND (q.attempt_count > 0 OR q.is_test) AND q.next_attempt_at <= :now
            ORDER BY q.next_attempt_at LIMIT (g.take + 1) / 2
            FOR UPDATE SKIP LOCKED
        ), tests AS (
            SELECT q.id FROM deliveries q
            WHERE NOT g.active AND q.webhook_id = g.webhook_id
              AND q.is_test AND q.status = 'pending' AND q.lease_until IS NULL
              AND q.next_attempt_at <= :now
            ORDER BY q.next_attempt_at LIMIT g.take
            FOR UPDATE SKIP LOCKED
        ), rest AS (
            SELECT q.id FROM deliveries q
            WHERE g.active AND q.webhook_id = g.webhook_id
              AND q.status = 'pending' AND q.lease_until IS NULL AND q.next_attempt_at <= :now
              AND q.id NOT IN (SELECT id FROM urgent)
            ORDER BY q.next_attempt_at LIMIT g.take - (SELECT count(*) FROM urgent)
            FOR UPDATE SKIP LOCKED
        )
        SELECT id FROM urgent UNION ALL SELECT id FROM tests UNION ALL SELECT id FROM rest
    ) d
)
UPDATE deliveries d
SET lease_until = :now + w.timeout_ms + :margin, lease_token = :token
FROM events e, webhooks w
-- an array: the planner then looks the few picked rows up by key, whatever it estimates
WHERE d.id = ANY (ARRAY(SELECT id FROM picked)) AND e.id = d.event_id AND w.id = d.webhook_id
RETURNING d.id, d.webhook_id, d.event_id, d.topic, d.is_test, d.attempt_count, d.lease_until,
          e.data, e.created_at AS event_created_at, e.conversation_id, e.conversation_url,
          w.organization_id, w.url, w.secret, w.previous_secrets, w.headers, w.timeout_ms,
          e.traceparent;

-- name: workers_lock
-- Workers change their shares one at a time (see queue.beat): each reads the others' and
-- writes its own under this lock, so that the shares never add up to more than the caps.
LOCK TABLE workers IN SHARE ROW EXCLUSIVE MODE;

-- name: workers_all
-- Every worker's row, and whether its heartbeat is recent (within :timeout ms). Heartbeats
-- are the database's time, so that workers on hosts whose clocks differ agree on who lapsed.
SELECT id, webhook_share, org_share, stopping,
       heartbeat_at >= (extract(epoch FROM clock_timestamp()) * 1000)::bigint - :timeout AS fresh
FROM workers ORDER BY id;

-- name: worker_beat
INSERT INTO workers (id, started_at, heartbeat_at, webhook_share, org_share, stopping)
VALUES (:id, (extract(epoch FROM clock_timestamp()) * 1000)::bigint,
        (extract(epoch FROM clock_timestamp()) * 1000)::bigint, :webhook_share, :org_share,
        :stopping)
ON CONFLICT (id) DO UPDATE
SET heartbeat_at = excluded.heartbeat_at, webhook_share = excluded.webhook_share,
    org_share = excluded.org_share, stopping = excluded.stopping;

-- name: queue_release_worker
-- A dead worker's deliveries go back to the queue (its lease tokens begin with :prefix).
UPDATE deliveries SET lease_until = NULL, lease_token = NULL
WHERE lease_until IS NOT NULL AND starts_with(lease_token, :prefix);

-- name: recover_page
-- The next page of a recovery window, and for each event whether the webhook lacks a
-- succeeded or pending delivery of it. The page is chosen first, so the check is one index
-- look-up per event of the page, never a scan of the webhook's whole history.
-- The page's events stay locked (FOR KEY SHARE) to the end of the transaction, so that the
-- retention purge, which locks what it deletes, never takes an event that gets a delivery.
WITH page AS (
    SELECT e.id, e.topic, e.created_at FROM events e
    WHERE e.organization_id = :organization_id AND e.created_at >= :since AND e.created_at < :until
      AND NOT e.is_test AND e.topic = ANY(:topics)
      AND (e.created_at > :after_at OR (e.created_at = :after_at AND e.id > :after_id))
    ORDER BY e.created_at, e.id LIMIT :limit
    FOR KEY SHARE OF e
)
SELECT p.id, p.topic, p.created_at,
       NOT EXISTS (SELECT 1 FROM deliveries d
                   WHERE d.event_id = p.id AND d.webhook_id = :webhook_id
                     AND d.status IN ('succeeded', 'pending')) AS missing
FROM page p ORDER BY p.created_at, p.id;

-- name: recover_lock
-- Recoveries of one webhook take turns (the second constant is the webhook's).
SELECT pg_advisory_xact_lock(72423, hashtext(:webhook_id));

-- name: purge_deliveries_batch
-- The batch stays locked to the end of the purge's transaction: no worker leases (claims
-- skip locked rows) or settles one of them meanwhile, so no attempt outlives its delivery.
SELECT id FROM deliveries WHERE id < :before_id AND lease_until IS NULL ORDER BY id LIMIT :limit
FOR UPDATE SKIP LOCKED;

-- name: purge_attempts
DELETE FROM attempts WHERE delivery_id = ANY(:ids);

-- name: purge_deliveries
DELETE FROM deliveries WHERE id = ANY(:ids);

-- name: purge_events_batch
-- Locked (a recovery reading one of them holds it FOR KEY SHARE, and is skipped): see
-- purge_events.
SELECT e.id FROM events e
WHERE e.created_at < :before
  AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.event_id = e.id)
ORDER BY e.created_at LIMIT :limit
FOR UPDATE OF e SKIP LOCKED;

-- name: purge_events
-- Checked again in this later statement, whose snapshot sees a recovery that committed a
-- delivery of one of them after the batch's snapshot was taken but before it was locked.
DELETE FROM events e WHERE e.id = ANY(:ids)
  AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.event_id = e.id);

-- name: delivery_insert
-- batch: columns
INSERT INTO deliveries (id, webhook_id, event_id, topic, is_test, status, attempt_count,
                        next_attempt_at, created_at)
SELECT id, webhook_id, event_id, topic, is_test, 'pending', 0, next_attempt_at, created_at
FROM unnest(:id::text[], :webhook_id::text[], :event_id::text[], :topic::text[], :is_test::bool[],
            :next_attempt_at::bigint[], :created_at::bigint[])
     AS u(id, webhook_id, event_id, topic, is_test, next_attempt_at, created_at);

-- name: settle
-- A batch of outcomes in one statement (atomic by itself): the webhooks' health, locked in
-- id order first (the API locks a webhook before its deliveries too), the deliveries' new
-- state, the attempts, and the dashboard's rollups of them. Each table's rows come as
-- arrays, :w_*, :d_*, :a_* and :r_*.
-- The health fold is explained in hookd.delivery.outcomes; every expression reads the
-- row as it was, so concurrent workers each apply on top of the other.
WITH locked AS (
    SELECT id FROM webhooks WHERE id = ANY(:w_id::text[]) ORDER BY id FOR NO KEY UPDATE
), w AS (
    SELECT * FROM unnest(:w_id::text[], :w_last_at::bigint[], :w_last_code::int[],
                         :w_last_message::text[], :w_last_response_time::bigint[],
                         :w_fresh_avg::float8[], :w_decay::float8[], :w_contribution::float8[],
                         :w_samples::bigint[], :w_attempt_succeeded::bool[], :w_errors_after::bigint[],
                         :w_delivery_succeeded::bool[], :w_failures_after::bigint[], :w_success_at::bigint[])
        AS u(id, last_at, last_code, last_message, last_response_time, fresh_avg, decay,
             contribution, samples, attempt_succeeded, errors_after, delivery_succeeded,
             failures_after, success_at)
), settled AS (
    -- Only the lease holder settles a delivery; a cancelled one stays cancelled.
    -- A retry asked for while the attempt was under way is queued now (retry_requested).
    UPDATE deliveries d
    SET status = CASE WHEN d.retry_requested THEN 'pending' ELSE u.status END,
        next_attempt_at = CASE WHEN d.retry_requested THEN u.attempted_at ELSE u.next_attempt_at END,
        retry_requested = FALSE, attempt_count = u.attempt_count,
        lease_until = NULL, lease_token = NULL, last_attempt_at = u.attempted_at,
        last_status_code = u.status_code, last_status_message = u.status_message
    FROM unnest(:d_id::text[], :d_token::text[], :d_status::text[], :d_attempt_count::int[],
                :d_next_attempt_at::bigint[], :d_attempted_at::bigint[], :d_status_code::int[],
                :d_status_message::text[])
         AS u(id, token, status, attempt_count, next_attempt_at, attempted_at, status_code, status_message)
    -- coalesce(): not a condition an index could answer, so that whatever the statistics
    -- say, the plan finds each row by its key (a plan from a new queue's statistics walked
    -- every pending delivery through ix_deliveries_webhook_status instead)
    WHERE d.id = u.id AND coalesce(d.status, '') = 'pending'
      AND (d.lease_token = u.token
           -- the lease ran out while the outcome waited (the database was away) and no
           -- other worker has claimed it since: the outcome still stands
           OR (d.lease_token IS NULL AND d.attempt_count = u.attempt_count - 1))
      AND EXISTS (SELECT 1 FROM locked)  -- webhook rows first: the order every writer keeps
    RETURNING d.id, d.webhook_id
), health AS (
    UPDATE webhooks h
    SET last_status_code = CASE WHEN coalesce(h.last_status_at, 0) <= w.last_at THEN w.last_code ELSE h.last_status_code END,
        last_status_message = CASE WHEN coalesce(h.last_status_at, 0) <= w.last_at THEN w.last_message ELSE h.last_status_message END,
        last_response_time = CASE WHEN coalesce(h.last_status_at, 0) <= w.last_at THEN w.last_response_time ELSE h.last_response_time END,
        last_status_at = CASE WHEN coalesce(h.last_status_at, 0) <= w.last_at THEN w.last_at ELSE h.last_status_at END,
        avg_response_time = CASE WHEN h.response_samples = 0 THEN w.fresh_avg
                                 ELSE h.avg_response_time * w.decay + w.contribution END,
        response_samples = h.response_samples + w.samples,
        errors_since_last_success = CASE WHEN w.attempt_succeeded THEN w.errors_after
                                         ELSE h.errors_since_last_success + w.errors_after END,
        consecutive_failures = CASE WHEN w.delivery_succeeded THEN w.failures_after
                                    ELSE h.consecutive_failures + w.failures_after END,
        last_success_at = CASE WHEN w.success_at > coalesce(h.last_success_at, -1) THEN w.success_at
                               ELSE h.last_success_at END,
        status = CASE WHEN h.status = 'active'
                       AND (CASE WHEN w.delivery_succeeded THEN w.failures_after
                                 ELSE h.consecutive_failures + w.failures_after END) >= :suspend_after
                      THEN 'suspended' ELSE h.status END
    FROM locked, w
    WHERE h.id = locked.id AND w.id = locked.id
      -- written once: a batch written again (its first answer was lost) settles nothing
      AND EXISTS (SELECT 1 FROM settled s WHERE s.webhook_id = h.id)
    RETURNING h.id
), tried AS (
    INSERT INTO attempts (id, delivery_id, webhook_id, attempt_number, attempted_at, succeeded,
                          status_code, response_time_ms, response_body, error)
    SELECT * FROM unnest(:a_id::text[], :a_delivery_id::text[], :a_webhook_id::text[],
                         :a_attempt_number::int[], :a_attempted_at::bigint[], :a_succeeded::bool[],
                         :a_status_code::int[], :a_response_time_ms::int[], :a_response_body::bytea[],
                         :a_error::text[])
    ON CONFLICT (id) DO NOTHING
    RETURNING id
), rolled AS (
    -- The dashboard's hourly rollups of the batch (hookd.store.rollups), :r_*: one row per
    -- webhook and hour, folded in Python and sorted by (webhook_id, hour), locked in that
    -- order after the webhooks. Nothing is added when the batch's first attempt is already
    -- recorded: a batch written twice counts once. Every part of one statement sees the
    -- same snapshot, taken before `tried` inserts the attempts, so this sees them only if
    -- an earlier write of the batch did.
    INSERT INTO webhook_rollups (webhook_id, hour, attempts, successes, failures, time_sum, b00, b01, b02, b03, b04, b05, b06, b07, b08, b09, b10, b11, b12, b13, b14, b15, b16, b17, b18, b19, b20, b21, b22, b23)
    SELECT u.webhook_id, u.hour, u.attempts, u.successes, u.failures, u.time_sum,
           u.b00, u.b01, u.b02, u.b03, u.b04, u.b05, u.b06, u.b07, u.b08, u.b09, u.b10, u.b11, u.b12, u.b13, u.b14, u.b15, u.b16, u.b17, u.b18, u.b19, u.b20, u.b21, u.b22, u.b23
    FROM unnest(:r_webhook_id::text[], :r_hour::bigint[], :r_attempts::int[], :r_successes::int[],
                :r_failures::int[], :r_time_sum::bigint[],
                :r_b00::int[], :r_b01::int[], :r_b02::int[], :r_b03::int[], :r_b04::int[], :r_b05::int[],
                :r_b06::int[], :r_b07::int[], :r_b08::int[], :r_b09::int[], :r_b10::int[], :r_b11::int[],
                :r_b12::int[], :r_b13::int[], :r_b14::int[], :r_b15::int[], :r_b16::int[], :r_b17::int[],
                :r_b18::int[], :r_b19::int[], :r_b20::int[], :r_b21::int[], :r_b22::int[], :r_b23::int[])
         AS u(webhook_id, hour, attempts, successes, failures, time_sum, b00, b01, b02, b03, b04, b05, b06, b07, b08, b09, b10, b11, b12, b13, b14, b15, b16, b17, b18, b19, b20, b21, b22, b23)
    WHERE NOT EXISTS (SELECT 1 FROM attempts WHERE id = (:a_id::text[])[1])
      AND EXISTS (SELECT 1 FROM locked)  -- webhook rows first (never deleted: always true)
    ORDER BY u.webhook_id, u.hour
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
        b23 = webhook_rollups.b23 + excluded.b23
)
SELECT (SELECT count(*) FROM health) + (SELECT count(*) FROM settled) + (SELECT count(*) FROM tried);

-- name: publish
-- An event, its idempotency key (when given and not held by a live earlier request) and a
-- delivery to each active webhook subscribed to its topic, in one statement: the targets
-- are those of the statement's own snapshot, so a webhook paused, deleted or created
-- meanwhile is either wholly before or wholly after it.
-- The delivery ids come from hookd (:delivery_ids, one per target in id order). When the
-- targets outnumber them, nothing is written, not even the key, and `targets` says how
-- many to send again. The key is taken first: a concurrent request with the same key waits
-- on it, then finds it held and writes nothing.
-- With :key_hash (an API key this process authenticated before, hookd.api.auth.KnownKeys),
-- the statement authenticates the request too, instead of a round trip of its own: the key
-- must still be live, of the organization, whose default version is still
-- :default_version; with :window_start, the request is counted in the key's window (only
-- if the key holds) and must be within :rate_limit. Otherwise nothing is written, and
-- `key_ok` and `request_count` say why.
WITH api_key AS (
    SELECT k.id FROM api_keys k JOIN organizations o ON o.id = k.organization_id
    WHERE k.key_hash = :key_hash::text AND k.revoked_at IS NULL
      AND o.id = :organization_id AND o.default_version IS NOT DISTINCT FROM :default_version::text
), counted AS (
    INSERT INTO rate_counters (key_id, window_start, count)
    SELECT id, :window_start::bigint, 1 FROM api_key WHERE :window_start::bigint IS NOT NULL
    ON CONFLICT (key_id, window_start) DO UPDATE SET count = rate_counters.count + 1
    RETURNING count
), allowed AS (
    SELECT 1 WHERE :key_hash::text IS NULL
        OR (EXISTS (SELECT 1 FROM api_key)
            AND (:window_start::bigint IS NULL OR (SELECT count FROM counted) <= :rate_limit::int))
), targets AS (
    SELECT w.id, row_number() OVER (ORDER BY w.id) AS n
    FROM webhooks w
    WHERE w.organization_id = :organization_id AND w.status = 'active' AND w.deleted_at IS NULL
      AND w.topics::jsonb ? :topic
), enough AS (
    SELECT 1 FROM allowed WHERE (SELECT count(*) FROM targets) <= cardinality(:delivery_ids::text[])
), claimed AS (
    INSERT INTO idempotency_keys (organization_id, key, event_id, created_at)
    SELECT :organization_id, :key::text, :id, :created_at FROM enough WHERE :key::text IS NOT NULL
    ON CONFLICT (organization_id, key) DO UPDATE
    SET event_id = excluded.event_id, created_at = excluded.created_at
    WHERE idempotency_keys.created_at < :expired_before
    RETURNING 1
), go AS (
    SELECT 1 FROM enough WHERE :key::text IS NULL OR EXISTS (SELECT 1 FROM claimed)
), event AS (
    INSERT INTO events (id, organization_id, topic, data, conversation_id, conversation_url, is_test, created_at,
                        traceparent)
    SELECT :id, :organization_id, :topic, :data, :conversation_id, :conversation_url, false, :created_at,
           :traceparent::text FROM go
    RETURNING id
), queued AS (
    INSERT INTO deliveries (id, webhook_id, event_id, topic, is_test, status, attempt_count,
                            next_attempt_at, created_at)
    SELECT u.id, t.id, :id, :topic, false, 'pending', 0, :created_at, :created_at
    FROM targets t
    JOIN unnest(:delivery_ids::text[]) WITH ORDINALITY AS u(id, n) ON u.n = t.n
    WHERE EXISTS (SELECT 1 FROM event)
    RETURNING 1
)
SELECT (SELECT count(*) FROM event) AS created, (SELECT count(*) FROM queued) AS deliveries,
       (SELECT count(*) FROM targets) AS targets,
       :key_hash::text IS NULL OR EXISTS (SELECT 1 FROM api_key) AS key_ok,
       (SELECT count FROM counted) AS request_count;

-- name: events_by_ids
SELECT * FROM events WHERE id = ANY(:ids::text[]);

-- name: custom_plans
-- This transaction's statements are planned for their parameters, never with a cached
-- generic plan: how many rows an events listing's id range holds depends on them, and a
-- generic plan, which cannot know, may walk the primary key through other organizations'
-- events instead of reading the organization's own index.
SET LOCAL plan_cache_mode = force_custom_plan;

-- ---- Dashboard rollups (hookd.store.rollups) --------------------------------------

-- name: rollup_totals
SELECT webhook_id, sum(attempts) AS attempts, sum(successes) AS successes,
       sum(failures) AS failures, sum(time_sum) AS time_sum,
       sum(b00) AS b00, sum(b01) AS b01, sum(b02) AS b02, sum(b03) AS b03, sum(b04) AS b04,
       sum(b05) AS b05, sum(b06) AS b06, sum(b07) AS b07, sum(b08) AS b08, sum(b09) AS b09,
       sum(b10) AS b10, sum(b11) AS b11, sum(b12) AS b12, sum(b13) AS b13, sum(b14) AS b14,
       sum(b15) AS b15, sum(b16) AS b16, sum(b17) AS b17, sum(b18) AS b18, sum(b19) AS b19,
       sum(b20) AS b20, sum(b21) AS b21, sum(b22) AS b22, sum(b23) AS b23
FROM webhook_rollups
WHERE webhook_id = ANY(:ids::text[]) AND hour >= :since
GROUP BY webhook_id;
-- name: metrics_queue
-- The waiting deliveries of each webhook that has any (see common.sql), in proportion to
-- the queue rather than the table: the webhooks with work are found one at a time along
-- ix_deliveries_queue (a loose index scan, as in queue_heads), and each one's waiting
-- deliveries are counted by an index-only scan of its range of that index. A plain GROUP
-- BY let the planner scan the whole table once the index had churned.
WITH RECURSIVE hooks(webhook_id) AS (
    SELECT (SELECT d.webhook_id FROM deliveries d
            WHERE d.status = 'pending' AND d.lease_until IS NULL
            ORDER BY d.webhook_id LIMIT 1)
    UNION ALL
    SELECT (SELECT d.webhook_id FROM deliveries d
            WHERE d.status = 'pending' AND d.lease_until IS NULL AND d.webhook_id > hooks.webhook_id
            ORDER BY d.webhook_id LIMIT 1)
    FROM hooks WHERE hooks.webhook_id IS NOT NULL
)
SELECT h.webhook_id, w.status, q.waiting, q.due, q.earliest
FROM hooks h
JOIN webhooks w ON w.id = h.webhook_id
CROSS JOIN LATERAL (
    SELECT count(*) AS waiting, count(*) FILTER (WHERE d.next_attempt_at <= :now) AS due,
           min(d.next_attempt_at) AS earliest
    FROM deliveries d
    WHERE d.webhook_id = h.webhook_id AND d.status = 'pending' AND d.lease_until IS NULL
) q;
