-- name: insert_workflows
-- Record new PENDING workflows, many rows in one statement (group commit).
-- Rows whose workflow_id exists are skipped; RETURNING names the inserted ones.
-- claimed_by is the runtime instance that runs each (0007_claims.sql).
-- Every insert into workflow_status by this release sets branched_steps (see
-- 0006_branches.sql). trace_context: see 0011_trace_context.sql.
INSERT INTO {schema}.workflow_status (
    workflow_id, status, name, inputs, app_name, app_version, executor_id,
    created_at, updated_at, parent_workflow_id, timeout_ms, deadline_epoch_ms, branched_steps,
    claimed_by, trace_context)
SELECT u.workflow_id, 'PENDING', u.name, u.inputs, u.app_name, u.app_version, u.executor_id,
       u.now_ms, u.now_ms, u.parent_workflow_id, u.timeout_ms, u.deadline_epoch_ms, true,
       u.claimed_by, u.trace_context
FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
            $7::int8[], $8::text[], $9::int8[], $10::int8[], $11::text[], $12::text[])
     AS u(workflow_id, name, inputs, app_name, app_version, executor_id,
          now_ms, parent_workflow_id, timeout_ms, deadline_epoch_ms, claimed_by, trace_context)
ON CONFLICT (workflow_id) DO NOTHING
RETURNING workflow_id;

-- name: insert_workflow
-- insert_workflows for a batch of one: the single-row form is cheaper than unnest.
INSERT INTO {schema}.workflow_status (
    workflow_id, status, name, inputs, app_name, app_version, executor_id,
    created_at, updated_at, parent_workflow_id, timeout_ms, deadline_epoch_ms, branched_steps,
    claimed_by, trace_context)
VALUES ($1, 'PENDING', $2, $3, $4, $5, $6, $7, $7, $8, $9, $10, true, $11, $12)
ON CONFLICT (workflow_id) DO NOTHING;

-- name: select_workflow_names
-- Name, status, claimant and fence of existing workflows $1 (for rows
-- insert_workflows skipped: the claimant says whether the row is the writer's
-- own insert, sent again after its reply was lost).
SELECT workflow_id, name, status, claimed_by, fence
FROM {schema}.workflow_status WHERE workflow_id = ANY($1::text[]);

-- name: complete_workflows
-- Record the outcome of finished workflows, many rows in one statement, and
-- announce each on w:<id>, and on q:<queue> for a queued one (its slot is
-- free; Postgres folds identical notifications of one transaction into one).
-- Only PENDING rows change (a workflow cancelled meanwhile stays CANCELLED),
-- and only for the holder of the fence. Returns the IDs it changed: for the
-- others, the row (CANCELLED, adopted) says how the workflow ended, not the
-- outcome its function produced. Commits asynchronously (set_config
-- is_local): an outcome is derivable from the recorded steps, so if a server
-- crash loses it, the workflow is PENDING again and replay records it again.
WITH done AS (
    UPDATE {schema}.workflow_status AS w
    SET status = u.status, output = u.output, error = u.error, updated_at = u.now_ms
    FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::int8[], $6::int4[])
         AS u(workflow_id, status, output, error, now_ms, fence)
    WHERE w.workflow_id = u.workflow_id AND w.status = 'PENDING' AND w.fence = u.fence
    RETURNING w.workflow_id, w.queue_name),
notified AS MATERIALIZED (
    SELECT (SELECT count(pg_notify('{schema}', 'w:' || workflow_id)) FROM done)
         + (SELECT count(pg_notify('{schema}', 'q:' || queue_name))
            FROM done WHERE queue_name IS NOT NULL) AS n,
           set_config('synchronous_commit', 'off', true) AS async_commit)
SELECT done.workflow_id, notified.n FROM done, notified;

-- name: complete_workflow
-- complete_workflows for a batch of one: returns 1 if it changed the row.
WITH done AS (
    UPDATE {schema}.workflow_status
    SET status = $2, output = $3, error = $4, updated_at = $5
    WHERE workflow_id = $1 AND status = 'PENDING' AND fence = $6
    RETURNING workflow_id, queue_name)
SELECT (SELECT count(*) FROM done),
       (SELECT count(pg_notify('{schema}', 'w:' || workflow_id)) FROM done)
     + (SELECT count(pg_notify('{schema}', 'q:' || queue_name))
        FROM done WHERE queue_name IS NOT NULL),
       (SELECT set_config('synchronous_commit', 'off', true));

-- name: cancel_workflow
-- Mark workflow $1 CANCELLED unless it already finished; announce it on c:<id>
-- (runtimes running it interrupt it), w:<id> (waiters re-read) and, if it was
-- PENDING on a queue, q:<queue> (its slot is free). With fence $3 (a
-- deadline's cancellation, by the runtime running it) only while the row
-- still holds that fence; a deadline also cancels the workflow's children
-- still ENQUEUED (they inherited it, and would otherwise wait for their
-- queue with a deadline already past; running ones end on their own). Returns
-- the status it had and whether it changed, or no row if it does not exist.
WITH old AS (
    SELECT workflow_id, status FROM {schema}.workflow_status WHERE workflow_id = $1 FOR UPDATE),
changed AS (
    UPDATE {schema}.workflow_status AS w SET status = 'CANCELLED', updated_at = $2
    FROM old WHERE w.workflow_id = old.workflow_id AND old.status IN ('PENDING', 'ENQUEUED')
      AND ($3::int4 IS NULL OR w.fence = $3)
    RETURNING w.workflow_id, w.queue_name, old.status),
children AS (
    UPDATE {schema}.workflow_status AS c SET status = 'CANCELLED', updated_at = $2
    FROM changed
    WHERE $3::int4 IS NOT NULL AND c.parent_workflow_id = changed.workflow_id
      AND c.status = 'ENQUEUED'
    RETURNING c.workflow_id)
SELECT old.status, EXISTS (SELECT 1 FROM changed) AS changed,
       (SELECT count(pg_notify('{schema}', k || ':' || workflow_id))
        FROM changed, (VALUES ('c'), ('w')) AS kinds(k))
     + (SELECT count(pg_notify('{schema}', 'w:' || workflow_id)) FROM children)
     + (SELECT count(pg_notify('{schema}', 'q:' || queue_name))
        FROM changed WHERE queue_name IS NOT NULL AND changed.status = 'PENDING') AS notified
FROM old;

-- name: select_workflow_status
-- Every column of workflow $1, or no row.
SELECT * FROM {schema}.workflow_status WHERE workflow_id = $1;

-- name: select_workflow_outcome
-- Status, output and error of workflow $1 (what get_result waits for), and
-- whether a CANCELLED one was cancelled because its deadline passed.
SELECT status, name, output, error, deadline_epoch_ms,
       deadline_epoch_ms IS NOT NULL AND updated_at >= deadline_epoch_ms AS timed_out
FROM {schema}.workflow_status WHERE workflow_id = $1;

-- name: mark_max_recovery_exceeded
-- Give up on workflows $1 that were recovered too many times; announce each
-- on w:<id> (their waiters, and live dashboards, re-read the row).
WITH given_up AS (
    UPDATE {schema}.workflow_status
    SET status = 'MAX_RECOVERY_ATTEMPTS_EXCEEDED', updated_at = $2
    WHERE workflow_id = ANY($1::text[]) AND status = 'PENDING'
    RETURNING workflow_id)
SELECT count(pg_notify('{schema}', 'w:' || workflow_id)) FROM given_up;

-- name: resume_workflow
-- Put a CANCELLED, ERROR or MAX_RECOVERY_ATTEMPTS_EXCEEDED workflow $1, or a
-- stranded PENDING one (the runtime instance that claimed it is gone: it does
-- not hold its lock and has missed three heartbeats, see 0008_instances.sql;
-- a lock free for a moment is a reconnect, not proof), back to work from its
-- last completed step, with its deadline and recovery count
-- cleared. A workflow of a user queue goes back to ENQUEUED on that queue, so
-- the queue's limits still hold; any other is claimed by executor $2 (PENDING,
-- app version $3, runtime instance $6) if its function is one of $7 (those
-- registered there) or, when $2 is NULL or it is not, ENQUEUED on the
-- internal queue $4. An
-- ENQUEUED workflow starts now, bypassing its queue (as DBOS does): it leaves
-- its queue (so it holds none of its slots) and is claimed like the others.
-- Announces q:<queue> when it enqueues, and w:<id> whenever it changes the
-- row (the workflow's waiters and live dashboards re-read it). Returns the status it had and, if it
-- changed, its name, inputs, fence and new status; no row if absent.
-- Heartbeats are compared with $8, or (NULL) the database's clock.
WITH old AS (
    SELECT w.workflow_id, w.status, w.queue_name, w.name,
           w.status = 'PENDING' AND EXISTS (
               SELECT 1 FROM {schema}.instances AS i
               WHERE i.instance_id = w.claimed_by
                 AND i.lock_key NOT IN (SELECT lock_key FROM {schema}.held_advisory_locks)
                 AND i.heartbeat_at
                     < coalesce($8::int8, (extract(epoch FROM clock_timestamp()) * 1000)::int8)
                       - 3 * i.heartbeat_ms
           ) AS stranded
    FROM {schema}.workflow_status AS w WHERE w.workflow_id = $1
    FOR UPDATE OF w),
target AS (
    SELECT old.workflow_id, old.status = 'ENQUEUED' AS bypass,
           $2::text IS NOT NULL AND NOT old.name = ANY($7::text[]) AS foreign_name,
           CASE WHEN old.status <> 'ENQUEUED' AND old.queue_name IS NOT NULL
                     AND old.queue_name <> $4 THEN old.queue_name
                WHEN $2::text IS NULL OR NOT old.name = ANY($7::text[]) THEN $4
           END AS queue_name  -- NULL: claimed by $2
    FROM old
    WHERE old.status IN ('CANCELLED', 'ERROR', 'MAX_RECOVERY_ATTEMPTS_EXCEEDED', 'ENQUEUED')
       OR old.stranded),
changed AS (
    UPDATE {schema}.workflow_status AS w
    SET status = CASE WHEN t.queue_name IS NULL THEN 'PENDING' ELSE 'ENQUEUED' END,
        executor_id = CASE WHEN t.queue_name IS NULL THEN $2 END,
        claimed_by = CASE WHEN t.queue_name IS NULL THEN $6 END,
        app_version = CASE WHEN t.foreign_name THEN w.app_version
                           ELSE COALESCE($3, w.app_version) END,
        queue_name = CASE WHEN t.bypass THEN t.queue_name
                          ELSE COALESCE(t.queue_name, w.queue_name) END,
        recovery_attempts = 0, deadline_epoch_ms = NULL, output = NULL, error = NULL,
        updated_at = $5, fence = w.fence + 1
    FROM target AS t
    WHERE w.workflow_id = t.workflow_id
    RETURNING w.workflow_id, w.name, w.inputs, w.fence, w.status, w.queue_name,
              w.branched_steps, w.trace_context)
SELECT old.status, old.stranded, changed.workflow_id, changed.name, changed.inputs, changed.fence,
       changed.branched_steps, changed.trace_context, changed.status AS new_status,
       (SELECT count(pg_notify('{schema}', 'q:' || queue_name))
        FROM changed WHERE status = 'ENQUEUED')
       + (SELECT count(pg_notify('{schema}', 'w:' || workflow_id)) FROM changed) AS notified
FROM old LEFT JOIN changed ON true;

-- name: select_workflow_states
-- Status and fence of workflows $1 (missing: deleted), so a runtime can check
-- what a notification or a lost one says about the workflows it runs.
SELECT workflow_id, status, fence FROM {schema}.workflow_status WHERE workflow_id = ANY($1::text[]);

-- name: select_stranded_workflows
-- The PENDING workflows of app version $3 that runtime instance $2 of
-- executor $1 claimed but does not run (it runs $4), with their fences:
-- candidates for reclaim_stranded_workflows (see reconcile.py). Only workflows
-- named in $5 (registered here): one it cannot run stays as it is, not
-- claimed again and again.
SELECT workflow_id, fence FROM {schema}.workflow_status
WHERE executor_id = $1 AND app_version = $3 AND status = 'PENDING' AND claimed_by = $2
  AND workflow_id <> ALL($4::text[]) AND name = ANY($5::text[]);

-- name: reclaim_stranded_workflows
-- Claim again, for runtime instance $2 of executor $1, the workflows $3 whose
-- fences are still $4 (nothing touched them since they were seen stranded),
-- bumping the fence. No recovery attempt is counted: a lost reply is not the
-- workflow's doing. Returns what run_claimed needs.
UPDATE {schema}.workflow_status AS w
SET fence = w.fence + 1, updated_at = $5
FROM unnest($3::text[], $4::int4[]) AS seen(workflow_id, fence)
WHERE w.workflow_id = seen.workflow_id AND w.fence = seen.fence AND w.status = 'PENDING'
  AND w.executor_id = $1 AND w.claimed_by = $2
RETURNING w.workflow_id, w.name, w.inputs, w.deadline_epoch_ms, w.fence, w.branched_steps,
          w.trace_context;
