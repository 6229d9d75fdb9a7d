-- name: upsert_heartbeat
-- Executor $1 of app $2, version $3, is alive now. Now is the database's
-- clock, as in adopt_orphaned_workflows: hosts' clocks differ, and one
-- running ahead would take every other host's workflows for orphans.
INSERT INTO {schema}.executors (executor_id, app_name, app_version, heartbeat_at)
VALUES ($1, $2, $3, (extract(epoch FROM clock_timestamp()) * 1000)::int8)
ON CONFLICT (executor_id)
DO UPDATE SET app_name = excluded.app_name, app_version = excluded.app_version,
              heartbeat_at = excluded.heartbeat_at;

-- name: adopt_orphaned_workflows
-- Claim for executor $1 (runtime instance $6) up to $5 PENDING workflows of app version $2 whose
-- executor has not heartbeat for $3 ms by the database's clock (or never),
-- at $4: bump their fence so the
-- old owner can write no further checkpoint, count a recovery attempt, and
-- announce a:<fence>:<id> so a stale owner that is still running stops.
-- SKIP LOCKED and the re-checked WHERE make each workflow go to one adopter.
-- A workflow recorded by an earlier release that has recorded no step yet has
-- no flat-numbered history to stay compatible with: its claim switches it to
-- branch IDs (branched_steps, 0006_branches.sql).
WITH orphans AS (
    SELECT w.workflow_id
    FROM {schema}.workflow_status AS w
    LEFT JOIN {schema}.executors AS e ON e.executor_id = w.executor_id
    WHERE w.status = 'PENDING' AND w.app_version = $2 AND w.executor_id <> $1
      AND (e.heartbeat_at IS NULL
           OR e.heartbeat_at < (extract(epoch FROM clock_timestamp()) * 1000)::int8 - $3)
    ORDER BY w.created_at
    LIMIT $5
    FOR UPDATE OF w SKIP LOCKED),
adopted AS (
    UPDATE {schema}.workflow_status AS w
    SET executor_id = $1, claimed_by = $6, fence = w.fence + 1,
        recovery_attempts = w.recovery_attempts + 1, updated_at = $4,
        branched_steps = w.branched_steps OR NOT EXISTS (
            SELECT 1 FROM {schema}.operation_outputs AS o WHERE o.workflow_id = w.workflow_id)
    FROM orphans
    WHERE w.workflow_id = orphans.workflow_id AND w.status = 'PENDING'
    RETURNING w.workflow_id, w.name, w.inputs, w.recovery_attempts,
              w.deadline_epoch_ms, w.fence, w.branched_steps)
SELECT a.*, pg_notify('{schema}', 'a:' || a.fence || ':' || a.workflow_id)
FROM adopted AS a;

-- name: count_live_executors
-- How many executors of app version $1 heartbeat within the last $2 ms, by the
-- database's clock: whether any runtime will dequeue that version's work.
SELECT count(*) FROM {schema}.executors
WHERE app_version = $1
  AND heartbeat_at >= (extract(epoch FROM clock_timestamp()) * 1000)::int8 - $2;
