-- The application versions (0010_app_versions.sql) and the work waiting on them.

-- name: list_application_versions
-- Every version registered or named by a PENDING or ENQUEUED workflow, newest
-- first: whether it is the latest, its live runtime instances (heartbeat
-- within three of their periods, by the database's clock), its PENDING and
-- ENQUEUED workflows, and when it was first and last seen (NULL: a version
-- only named by workflows).
-- $1, when given, is now instead of the database's clock (a test's virtual clock).
WITH clock AS (SELECT coalesce($1::int8, (extract(epoch FROM clock_timestamp()) * 1000)::int8) AS now_ms),
live AS (
    SELECT i.app_version, count(*) AS n
    FROM {schema}.instances AS i, clock
    WHERE i.heartbeat_at >= clock.now_ms - 3 * i.heartbeat_ms
    GROUP BY i.app_version),
work AS (
    SELECT app_version,
           count(*) FILTER (WHERE status = 'PENDING') AS pending,
           count(*) FILTER (WHERE status = 'ENQUEUED') AS enqueued
    FROM {schema}.workflow_status
    WHERE status IN ('PENDING', 'ENQUEUED') AND app_version IS NOT NULL
    GROUP BY app_version),
latest AS (
    SELECT a.version FROM {schema}.app_versions AS a, clock
    WHERE EXISTS (
        SELECT 1 FROM {schema}.instances AS i
        WHERE i.app_version = a.version AND i.heartbeat_at >= clock.now_ms - 3 * i.heartbeat_ms)
    ORDER BY a.latest_at DESC, a.version LIMIT 1)
SELECT coalesce(v.version, w.app_version) AS version,
       coalesce(v.version = (SELECT version FROM latest), false) AS is_latest,
       coalesce(l.n, 0) AS live_executors,
       coalesce(w.pending, 0) AS pending, coalesce(w.enqueued, 0) AS enqueued,
       v.first_seen, v.last_seen
FROM {schema}.app_versions AS v
FULL JOIN work AS w ON w.app_version = v.version
LEFT JOIN live AS l ON l.app_version = coalesce(v.version, w.app_version)
ORDER BY v.first_seen DESC NULLS LAST, 1;

-- name: set_latest_version
-- Make version $1 the latest: its latest_at goes past every other's. Returns
-- no row when the version was never registered.
UPDATE {schema}.app_versions
SET latest_at = greatest(coalesce($2::int8, (extract(epoch FROM clock_timestamp()) * 1000)::int8),
                         (SELECT max(latest_at) + 1 FROM {schema}.app_versions))
WHERE version = $1
RETURNING version;

-- name: select_known_versions
-- The registered versions, newest first.
SELECT version FROM {schema}.app_versions ORDER BY first_seen DESC, version;

-- name: adopt_workflows
-- Move the PENDING and ENQUEUED workflows of version $1 (only those named in
-- $3, unless NULL) to version $2, at $4: runtimes of $2 then dequeue the
-- ENQUEUED ones and take over the PENDING ones whose runtime instance is gone
-- (a live one keeps running its workflows, whatever their version says; see
-- claim_orphaned_workflows). Announces q:<queue> for each queue with ENQUEUED
-- ones, so their dequeuers look now. Returns the moved workflows' IDs and statuses.
WITH moved AS (
    UPDATE {schema}.workflow_status
    SET app_version = $2, updated_at = $4
    WHERE app_version = $1 AND status IN ('PENDING', 'ENQUEUED')
      AND ($3::text[] IS NULL OR workflow_id = ANY($3::text[]))
    RETURNING workflow_id, status, queue_name),
announced AS (
    SELECT count(pg_notify('{schema}', 'q:' || q.queue_name))
    FROM (SELECT DISTINCT queue_name FROM moved
          WHERE status = 'ENQUEUED' AND queue_name IS NOT NULL) AS q)
SELECT workflow_id, status, (SELECT * FROM announced) AS notified FROM moved
ORDER BY workflow_id;

-- name: count_unrunnable
-- The PENDING and ENQUEUED workflows of version $1 whose function is not one
-- of $2 (those registered in the asking runtime), by name, most first: work
-- no runtime of the version may be able to run (a workflow renamed or removed
-- under a pinned version).
SELECT name, count(*) AS n
FROM {schema}.workflow_status
WHERE app_version = $1 AND status IN ('PENDING', 'ENQUEUED') AND NOT name = ANY($2::text[])
GROUP BY name
ORDER BY n DESC, name
LIMIT 10;
