-- name: dashboard_list_workflows
-- One page of the dashboard's workflow list, newest first, keyset-paged: the
-- rows strictly before ($9 created_at, $10 workflow_id) in that order (NULL:
-- the first page), at most $11. Filters (NULL matches all): $1 statuses, $2
-- names, $3 queue names, $4 app versions, $5 executor IDs, $6..$7 created_at
-- range (epoch ms, inclusive), $8 an ID prefix. Run with plan_cache_mode =
-- force_custom_plan (dashboard/data.py): the NULL filters then fold away and
-- the planner walks an index in created_at order (workflow_status_created_at_idx,
-- or the (status|name|queue_name, created_at) ones), stopping after $11 rows.
-- A filter of one value is also written as an equality (the cardinality
-- lines): "= ANY" of a one-element array does not let the planner walk the
-- (column, created_at) index in order; an equality does. An ID prefix is a
-- filter along the created_at index (no index serves a prefix under a
-- non-C collation, and one would cost every insert): fast while the prefix
-- matches recent workflows, a longer walk when it matches few old ones.
-- No payloads: a list never fetches TOASTed inputs or outputs.
SELECT workflow_id, status, name, queue_name, app_version, executor_id,
       created_at, updated_at, recovery_attempts, parent_workflow_id
FROM {schema}.workflow_status
WHERE ($1::text[] IS NULL OR status = ANY($1::text[]))
  AND (cardinality($1::text[]) IS DISTINCT FROM 1 OR status = ($1::text[])[1])
  AND ($2::text[] IS NULL OR name = ANY($2::text[]))
  AND (cardinality($2::text[]) IS DISTINCT FROM 1 OR name = ($2::text[])[1])
  AND ($3::text[] IS NULL OR queue_name = ANY($3::text[]))
  AND (cardinality($3::text[]) IS DISTINCT FROM 1 OR queue_name = ($3::text[])[1])
  AND ($4::text[] IS NULL OR app_version = ANY($4::text[]))
  AND ($5::text[] IS NULL OR executor_id = ANY($5::text[]))
  AND ($6::int8 IS NULL OR created_at >= $6::int8)
  AND ($7::int8 IS NULL OR created_at <= $7::int8)
  AND ($8::text IS NULL OR starts_with(workflow_id, $8::text))
  AND ($9::int8 IS NULL OR (created_at, workflow_id) < ($9::int8, $10::text))
ORDER BY created_at DESC, workflow_id DESC
LIMIT $11::int8;

-- name: dashboard_children
-- The child workflows of $1 (started or enqueued by it), oldest first.
SELECT workflow_id, name, status, created_at
FROM {schema}.workflow_status
WHERE parent_workflow_id = $1
ORDER BY created_at, workflow_id
LIMIT 500;

-- name: dashboard_status_counts
-- Workflows created since $1 (epoch ms), by status.
SELECT status, count(*) AS n
FROM {schema}.workflow_status
WHERE created_at >= $1::int8
GROUP BY status;

-- name: dashboard_throughput
-- Workflows created since $1, per bucket of $2 ms (bucket = its start), by
-- their status now.
SELECT (created_at - $1::int8) / $2::int8 AS bucket, status, count(*) AS n
FROM {schema}.workflow_status
WHERE created_at >= $1::int8
GROUP BY 1, 2
ORDER BY 1;

-- name: dashboard_recent_failures
-- The $1 most recent workflows in ERROR (workflow_status_status_created_at_idx).
SELECT workflow_id, name, created_at, updated_at, error
FROM {schema}.workflow_status
WHERE status = 'ERROR'
ORDER BY created_at DESC
LIMIT $1::int8;

-- name: dashboard_queue_position
-- Where ENQUEUED workflow $1 stands in its queue: how many ENQUEUED
-- workflows of the same queue (and partition) a claim takes first.
SELECT w.queue_name, w.queue_partition_key, w.not_before,
       (SELECT count(*) FROM {schema}.workflow_status AS o
        WHERE o.queue_name = w.queue_name AND o.status = 'ENQUEUED'
          AND o.queue_partition_key IS NOT DISTINCT FROM w.queue_partition_key
          AND (o.priority, o.enqueue_seq) < (w.priority, w.enqueue_seq)) AS ahead
FROM {schema}.workflow_status AS w
WHERE w.workflow_id = $1 AND w.status = 'ENQUEUED';

-- name: dashboard_streams
-- The streams of workflow $1: each key's entries, whether it is closed, and
-- its last value (truncated to $2 characters).
-- The last value is read alone (the primary key, backwards), not gathered.
SELECT k.key, k.entries, k.closed, left(last.value, $2::int) AS last_value
FROM (SELECT key, count(*) FILTER (WHERE NOT closed) AS entries, bool_or(closed) AS closed
      FROM {schema}.streams WHERE workflow_id = $1 GROUP BY key) AS k
LEFT JOIN LATERAL (
    SELECT s.value FROM {schema}.streams AS s
    WHERE s.workflow_id = $1 AND s.key = k.key AND NOT s.closed
    ORDER BY s."offset" DESC LIMIT 1) AS last ON true
ORDER BY k.key;

-- name: dashboard_events
-- The events of workflow $1 with their values (truncated to $2 characters).
SELECT key, left(value, $2::int) AS value, updated_at
FROM {schema}.workflow_events
WHERE workflow_id = $1
ORDER BY key;

-- name: dashboard_instances
-- Every registered runtime instance, most recent heartbeat first, with how
-- many PENDING workflows it holds; $1 is now (epoch ms, NULL: the database's clock).
SELECT i.instance_id, i.executor_id, i.app_version, i.hostname, i.pid, i.started_at,
       i.heartbeat_at, i.heartbeat_ms,
       coalesce($1::int8, (extract(epoch FROM clock_timestamp()) * 1000)::int8)
           - i.heartbeat_at AS heartbeat_age_ms,
       (SELECT count(*) FROM {schema}.workflow_status AS w
        WHERE w.claimed_by = i.instance_id AND w.status = 'PENDING') AS pending
FROM {schema}.instances AS i
ORDER BY i.heartbeat_at DESC
LIMIT 200;

-- name: dashboard_schedule_ticks
-- Every schedule's last started tick (epoch ms).
SELECT schedule_name, last_tick_ms FROM {schema}.schedule_ticks ORDER BY schedule_name;

-- name: dashboard_progress
-- How far workflow $1 has got: its status, last update and recorded calls
-- (the live page polls this while a workflow runs: no NOTIFY per step).
SELECT w.status, w.updated_at,
       (SELECT count(*) FROM {schema}.operation_outputs AS o WHERE o.workflow_id = w.workflow_id)
       + (SELECT count(*) FROM {schema}.branch_outputs AS b WHERE b.workflow_id = w.workflow_id)
           AS calls
FROM {schema}.workflow_status AS w
WHERE w.workflow_id = $1;

-- name: dashboard_watermark
-- The newest workflow's created_at (an index-only step down
-- workflow_status_created_at_idx): a live list polls it, since a start sends
-- no NOTIFY.
SELECT max(created_at) FROM {schema}.workflow_status;
