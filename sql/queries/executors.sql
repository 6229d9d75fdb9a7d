-- name: upsert_heartbeat
-- Runtime instance $1 of executor $2, app $3, version $4 (host $5, pid $6,
-- advisory lock key $7, host key $8, heartbeat period $9 ms) is alive now; so is its executor. Now is the
-- database's clock, as in claim_orphaned_workflows: hosts' clocks differ, and
-- one running ahead would take every other host's workflows for orphans.
-- Also deletes the rows of instances gone for a day (their lock free) that no
-- PENDING workflow names: a row is what says an instance is alive or gone.
-- Registers version $4 (0010_app_versions.sql) and returns the latest
-- version: the one with the greatest latest_at among those a live instance
-- runs (a version launched once and gone is never the latest).
-- $10, when given, is now instead (a test's virtual clock).
WITH clock AS (
    SELECT coalesce($10::int8, (extract(epoch FROM clock_timestamp()) * 1000)::int8) AS now_ms),
version AS (
    INSERT INTO {schema}.app_versions (version, app_name, first_seen, last_seen, latest_at)
    SELECT $4, $3, clock.now_ms, clock.now_ms, clock.now_ms FROM clock
    ON CONFLICT (version) DO UPDATE SET last_seen = excluded.last_seen
    RETURNING version, latest_at),
executor AS (
    INSERT INTO {schema}.executors (executor_id, app_name, app_version, heartbeat_at)
    SELECT $2, $3, $4, clock.now_ms FROM clock
    ON CONFLICT (executor_id)
    DO UPDATE SET app_name = excluded.app_name, app_version = excluded.app_version,
                  heartbeat_at = excluded.heartbeat_at),
gone AS (
    DELETE FROM {schema}.instances AS i USING clock
    WHERE i.heartbeat_at < clock.now_ms - 86400000 AND i.instance_id <> $1
      AND i.lock_key NOT IN (SELECT lock_key FROM {schema}.held_advisory_locks)
      AND NOT EXISTS (
          SELECT 1 FROM {schema}.workflow_status AS w
          WHERE w.claimed_by = i.instance_id AND w.status = 'PENDING'))
INSERT INTO {schema}.instances (instance_id, executor_id, app_name, app_version, hostname,
                                pid, lock_key, host_key, started_at, heartbeat_at, heartbeat_ms)
SELECT $1, $2, $3, $4, $5, $6, $7, $8, clock.now_ms, clock.now_ms, $9 FROM clock
ON CONFLICT (instance_id)
DO UPDATE SET app_version = excluded.app_version, heartbeat_at = excluded.heartbeat_at
-- The statement's snapshot does not show the version row it wrote: take that
-- one from the CTE, the others from the table.
RETURNING (SELECT v.version FROM (
               SELECT a.version, a.latest_at FROM {schema}.app_versions AS a, clock
               WHERE a.version <> $4 AND EXISTS (
                   SELECT 1 FROM {schema}.instances AS i
                   WHERE i.app_version = a.version
                     AND i.heartbeat_at >= clock.now_ms - 3 * i.heartbeat_ms)
               UNION ALL SELECT version, latest_at FROM version) AS v
           ORDER BY v.latest_at DESC, v.version LIMIT 1) AS latest_version;

-- name: lock_instance
-- Runtime instance $1 takes its advisory lock $2 for this session (the
-- listener's connection, for the instance's whole life) if it is free, and
-- records when: a new locked_at tells siblings that saw the lock free that
-- it came back. Returns whether it took the lock; it is not free when an
-- earlier session of the same instance still holds it (see free_instance_lock).
-- Now is $3, or (NULL) the database's clock.
WITH taken AS (SELECT pg_try_advisory_lock($2) AS locked),
stamped AS (
    UPDATE {schema}.instances
    SET locked_at = coalesce($3::int8, (extract(epoch FROM clock_timestamp()) * 1000)::int8)
    FROM taken
    WHERE instance_id = $1 AND taken.locked)
SELECT locked FROM taken;

-- name: free_instance_lock
-- End the other sessions holding advisory lock $1, waiting up to $2 ms for
-- each to exit: an earlier listener connection of this instance that the
-- server still thinks alive (this side gave up on it, say, as half-open).
-- Returns how many there were.
SELECT count(pg_terminate_backend(h.pid, $2::int8))
FROM {schema}.held_advisory_locks AS h
WHERE h.lock_key = $1 AND h.pid <> pg_backend_pid();

-- name: forget_instance
-- Runtime instance $1 shut down: the PENDING workflows it claimed are orphans now.
DELETE FROM {schema}.instances WHERE instance_id = $1;

-- name: select_lockless_instances
-- The instances other than $1 whose advisory lock nobody holds, with their
-- locked_at (and host_key and pid): suspects. One still free a settle period
-- later, with the same locked_at, is gone (claim_orphaned_workflows).
SELECT i.instance_id, i.locked_at, i.host_key, i.pid
FROM {schema}.instances AS i
WHERE i.instance_id <> $1
  AND i.lock_key NOT IN (SELECT lock_key FROM {schema}.held_advisory_locks);

-- name: claim_orphaned_workflows
-- Claim for runtime instance $6 of executor $9 up to $5 PENDING workflows of
-- app version $2 and of the functions $10 registered there (a workflow it
-- cannot run is left for a process that can), and of executor $1 unless NULL, whose claiming instance is
-- gone, at $4 (this host's clock, for updated_at). An instance is gone when:
-- * it has not heartbeat for $3 ms by the database's clock (NULL: never, the
--   lease is infinite), nor for three of its own heartbeat periods; or
-- * it is one of the suspects $7, seen with locked_at $8 and its lock free a
--   settle period ago, and its lock is still free with that same locked_at
--   (it did not reconnect meanwhile); or
-- A workflow whose claimant has no row (a release before 0008_instances.sql,
-- which may still be running during a deploy) or none at all (before
-- 0007_claims.sql) follows those releases' rule: orphaned when its executor
-- is $1 or has not heartbeat for $3 ms.
-- Each claimed workflow gets its fence bumped, so the old owner (were it
-- somehow running) can write no further checkpoint, a recovery attempt
-- counted, and a:<fence>:<id> announced, so such an owner stops at once.
-- The fence seen, checked again by the UPDATE (every claim bumps it), makes
-- each workflow go to one claimer. FOR UPDATE without SKIP LOCKED: a row a
-- concurrent statement holds (a cancel, another claimer) is waited for and
-- re-checked, not skipped, so an empty claim means nothing is left. (A row
-- that no longer qualifies leaves its slot empty: a short batch is not
-- necessarily the last.) Claimers lock in created_at order, so two never
-- wait for each other.
-- A workflow recorded by an earlier release that has recorded no step yet has
-- no flat-numbered history to stay compatible with: its claim switches it to
-- branch IDs (branched_steps, 0006_branches.sql).
-- $11, when given, is now instead of the database's clock (a test's virtual clock).
WITH clock AS (
    SELECT coalesce($11::int8, (extract(epoch FROM clock_timestamp()) * 1000)::int8) AS now_ms),
gone AS (
    SELECT i.instance_id
    FROM {schema}.instances AS i, clock
    WHERE i.instance_id <> $6 AND $3::int8 IS NOT NULL
      AND i.heartbeat_at < clock.now_ms - greatest($3::int8, 3 * i.heartbeat_ms)
    UNION
    SELECT i.instance_id
    FROM {schema}.instances AS i
    JOIN unnest($7::text[], $8::int8[]) AS s(instance_id, locked_at)
      ON s.instance_id = i.instance_id AND s.locked_at IS NOT DISTINCT FROM i.locked_at
    WHERE i.instance_id <> $6
      AND i.lock_key NOT IN (SELECT lock_key FROM {schema}.held_advisory_locks)),
orphans AS (
    SELECT w.workflow_id, w.fence
    FROM {schema}.workflow_status AS w
    CROSS JOIN clock
    LEFT JOIN {schema}.instances AS i ON i.instance_id = w.claimed_by
    LEFT JOIN {schema}.executors AS e ON e.executor_id = w.executor_id
    WHERE w.status = 'PENDING' AND w.app_version = $2 AND w.name = ANY($10::text[])
      AND ($1::text IS NULL OR w.executor_id = $1)
      AND w.claimed_by IS DISTINCT FROM $6
      AND (w.claimed_by IN (SELECT instance_id FROM gone)
           OR (i.instance_id IS NULL
               AND (w.executor_id = $1 OR e.heartbeat_at IS NULL
                    OR e.heartbeat_at < clock.now_ms - $3::int8)))
    ORDER BY w.created_at, w.workflow_id
    LIMIT $5
    FOR UPDATE OF w),
claimed AS (
    UPDATE {schema}.workflow_status AS w
    SET executor_id = $9, claimed_by = $6, fence = w.fence + 1,
        recovery_attempts = w.recovery_attempts + 1, updated_at = $4,
        branched_steps = w.branched_steps OR NOT EXISTS (
            SELECT 1 FROM {schema}.operation_outputs AS o WHERE o.workflow_id = w.workflow_id)
    FROM orphans
    WHERE w.workflow_id = orphans.workflow_id AND w.fence = orphans.fence
      AND w.status = 'PENDING'
    RETURNING w.workflow_id, w.name, w.inputs, w.recovery_attempts,
              w.deadline_epoch_ms, w.fence, w.branched_steps, w.trace_context)
SELECT c.*, pg_notify('{schema}', 'a:' || c.fence || ':' || c.workflow_id)
FROM claimed AS c;

-- name: count_live_executors
-- How many executors of app version $1 heartbeat within the last $2 ms, by the
-- database's clock (or $3, a virtual clock's now): whether any runtime will
-- dequeue that version's work.
SELECT count(*) FROM {schema}.executors
WHERE app_version = $1
  AND heartbeat_at >= coalesce($3::int8, (extract(epoch FROM clock_timestamp()) * 1000)::int8) - $2;
