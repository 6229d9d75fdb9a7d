-- Checkpoints live in two tables (see 0006_branches.sql): operation_outputs
-- for the workflow's own sequence (branch ''), branch_outputs for calls made
-- in the tasks it created. Every statement that writes a checkpoint takes the
-- branch and its origin and writes the row to the table the branch belongs to.
-- It writes only while the workflow is PENDING under the writer's fence: a
-- workflow adopted by another runtime, cancelled, or deleted meanwhile records
-- nothing more, even when its runtime missed the notification.

-- name: insert_steps
-- Checkpoint completed steps, many rows in one statement (group commit);
-- $12 and $13 (for insert_own_steps $10 and $11) hold each step's attempts
-- and label (see 0009_step_attempts.sql).
-- The first writer of (workflow_id, branch, step_id) wins; a row whose fence
-- ($9) is not the workflow's current one is not written (its writer lost the
-- workflow to another runtime). RETURNING names the rows written now.
WITH own AS (
    INSERT INTO {schema}.operation_outputs (
        workflow_id, step_id, function_name, output, error, child_workflow_id,
        started_at, completed_at, attempts, label)
    SELECT u.workflow_id, u.step_id, u.function_name, u.output, u.error,
           u.child_workflow_id, u.started_at, u.completed_at, u.attempts, u.label
    FROM unnest($1::text[], $2::int4[], $3::text[], $4::text[], $5::text[],
                $6::text[], $7::int8[], $8::int8[], $9::int4[], $10::text[],
                $12::int4[], $13::text[])
         AS u(workflow_id, step_id, function_name, output, error, child_workflow_id,
              started_at, completed_at, fence, branch, attempts, label)
    JOIN {schema}.workflow_status AS w
      ON w.workflow_id = u.workflow_id AND w.fence = u.fence AND w.status = 'PENDING'
    WHERE u.branch = ''
    ON CONFLICT (workflow_id, step_id) DO NOTHING
    RETURNING workflow_id, ''::text AS branch, step_id),
branched AS (
    INSERT INTO {schema}.branch_outputs (
        workflow_id, branch, step_id, origin, function_name, output, error,
        child_workflow_id, started_at, completed_at, attempts, label)
    SELECT u.workflow_id, u.branch, u.step_id, u.origin, u.function_name, u.output,
           u.error, u.child_workflow_id, u.started_at, u.completed_at, u.attempts, u.label
    FROM unnest($1::text[], $2::int4[], $3::text[], $4::text[], $5::text[],
                $6::text[], $7::int8[], $8::int8[], $9::int4[], $10::text[], $11::int4[],
                $12::int4[], $13::text[])
         AS u(workflow_id, step_id, function_name, output, error, child_workflow_id,
              started_at, completed_at, fence, branch, origin, attempts, label)
    JOIN {schema}.workflow_status AS w
      ON w.workflow_id = u.workflow_id AND w.fence = u.fence AND w.status = 'PENDING'
    WHERE u.branch <> ''
    ON CONFLICT (workflow_id, branch, step_id) DO NOTHING
    RETURNING workflow_id, branch, step_id)
SELECT workflow_id, branch, step_id FROM own
UNION ALL
SELECT workflow_id, branch, step_id FROM branched;

-- name: insert_own_steps
-- insert_steps for a batch of the workflows' own sequences only (no branch
-- rows): the common case, without the second INSERT.
INSERT INTO {schema}.operation_outputs (
    workflow_id, step_id, function_name, output, error, child_workflow_id,
    started_at, completed_at, attempts, label)
SELECT u.workflow_id, u.step_id, u.function_name, u.output, u.error, u.child_workflow_id,
       u.started_at, u.completed_at, u.attempts, u.label
FROM unnest($1::text[], $2::int4[], $3::text[], $4::text[], $5::text[],
            $6::text[], $7::int8[], $8::int8[], $9::int4[], $10::int4[], $11::text[])
     AS u(workflow_id, step_id, function_name, output, error, child_workflow_id,
          started_at, completed_at, fence, attempts, label)
JOIN {schema}.workflow_status AS w
      ON w.workflow_id = u.workflow_id AND w.fence = u.fence AND w.status = 'PENDING'
ON CONFLICT (workflow_id, step_id) DO NOTHING
RETURNING workflow_id, ''::text AS branch, step_id;

-- name: insert_step_if_absent
-- insert_steps for one row of the workflow's own sequence: the single-row form
-- is cheaper than unnest. The command tag (INSERT 0 1 or INSERT 0 0) says
-- whether it was written. $10, $11: attempts, label.
INSERT INTO {schema}.operation_outputs (
    workflow_id, step_id, function_name, output, error, child_workflow_id,
    started_at, completed_at, attempts, label)
SELECT $1, $2, $3, $4, $5, $6, $7, $8, $10, $11
WHERE EXISTS (SELECT 1 FROM {schema}.workflow_status WHERE workflow_id = $1 AND fence = $9
                    AND status = 'PENDING')
ON CONFLICT (workflow_id, step_id) DO NOTHING;

-- name: insert_branch_step_if_absent
-- insert_steps for one row of branch $10 (origin $11); the command tag says
-- whether it was written. $12, $13: attempts, label.
INSERT INTO {schema}.branch_outputs (
    workflow_id, step_id, function_name, output, error, child_workflow_id,
    started_at, completed_at, branch, origin, attempts, label)
SELECT $1, $2, $3, $4, $5, $6, $7, $8, $10, $11, $12, $13
WHERE EXISTS (SELECT 1 FROM {schema}.workflow_status WHERE workflow_id = $1 AND fence = $9
                    AND status = 'PENDING')
ON CONFLICT (workflow_id, branch, step_id) DO NOTHING;

-- name: insert_step
-- Checkpoint one step of branch $10 (origin $11) inside a caller's transaction
-- (@DBOS.transaction): no ON CONFLICT, so a recorded step raises a unique
-- violation that aborts that transaction, and the body commits exactly once.
-- Returns 0 when the fence ($9) is stale: the caller rolls back. $12, $13:
-- attempts, label.
WITH own AS (
    INSERT INTO {schema}.operation_outputs (
        workflow_id, step_id, function_name, output, error, child_workflow_id,
        started_at, completed_at, attempts, label)
    SELECT $1, $2, $3, $4, $5, $6, $7, $8, $12::int4, $13::text
    WHERE $10 = ''
      AND EXISTS (SELECT 1 FROM {schema}.workflow_status WHERE workflow_id = $1 AND fence = $9
                    AND status = 'PENDING')
    RETURNING 1),
branched AS (
    INSERT INTO {schema}.branch_outputs (
        workflow_id, step_id, function_name, output, error, child_workflow_id,
        started_at, completed_at, branch, origin, attempts, label)
    SELECT $1, $2, $3, $4, $5, $6, $7, $8, $10, $11, $12::int4, $13::text
    WHERE $10 <> ''
      AND EXISTS (SELECT 1 FROM {schema}.workflow_status WHERE workflow_id = $1 AND fence = $9
                    AND status = 'PENDING')
    RETURNING 1)
SELECT (SELECT count(*) FROM own) + (SELECT count(*) FROM branched);

-- name: record_interruptions
-- Record the calls (workflow $1, fence $2) that a cancellation of the
-- workflow's own making interrupted (branches $3, step IDs $4, origins $5,
-- names $6, at $8): error $7 marks them. Unlike every other checkpoint this
-- one overwrites: the call may have recorded its outcome while the
-- cancellation was landing, and what the workflow went on with is the
-- interruption. Nothing is written for a stale fence.
WITH u AS (
    SELECT * FROM unnest($3::text[], $4::int4[], $5::int4[], $6::text[])
        AS u(branch, step_id, origin, function_name)
    WHERE EXISTS (SELECT 1 FROM {schema}.workflow_status WHERE workflow_id = $1 AND fence = $2
                    AND status = 'PENDING')),
own AS (
    INSERT INTO {schema}.operation_outputs (
        workflow_id, step_id, function_name, error, started_at, completed_at)
    SELECT $1, u.step_id, u.function_name, $7, $8, $8 FROM u WHERE u.branch = ''
    ON CONFLICT (workflow_id, step_id) DO UPDATE
    SET output = NULL, error = excluded.error, child_workflow_id = NULL,
        completed_at = excluded.completed_at
    RETURNING 1),
branched AS (
    INSERT INTO {schema}.branch_outputs (
        workflow_id, branch, step_id, origin, function_name, error, started_at, completed_at)
    SELECT $1, u.branch, u.step_id, u.origin, u.function_name, $7, $8, $8
    FROM u WHERE u.branch <> ''
    ON CONFLICT (workflow_id, branch, step_id) DO UPDATE
    SET output = NULL, error = excluded.error, child_workflow_id = NULL,
        completed_at = excluded.completed_at
    RETURNING 1)
SELECT (SELECT count(*) FROM own) + (SELECT count(*) FROM branched);

-- name: select_steps_of
-- Recorded steps of workflows $1, read once when they (re)start.
SELECT workflow_id, ''::text AS branch, step_id, function_name, output, error,
       child_workflow_id
FROM {schema}.operation_outputs WHERE workflow_id = ANY($1::text[])
UNION ALL
SELECT workflow_id, branch, step_id, function_name, output, error, child_workflow_id
FROM {schema}.branch_outputs WHERE workflow_id = ANY($1::text[]);

-- name: select_steps_page
-- select_steps_of a page at a time: at most $5 recorded steps of workflows
-- $1, in (workflow_id, branch, step_id) order, after the key ($2, $3, $4)
-- (NULL $2: from the first). Recovery reads a batch's history this way, so
-- no batch of long histories is read (and held) whole.
SELECT workflow_id, branch, step_id, function_name, output, error, child_workflow_id
FROM (
    SELECT workflow_id, ''::text AS branch, step_id, function_name, output, error,
           child_workflow_id
    FROM {schema}.operation_outputs WHERE workflow_id = ANY($1::text[])
    UNION ALL
    SELECT workflow_id, branch, step_id, function_name, output, error, child_workflow_id
    FROM {schema}.branch_outputs WHERE workflow_id = ANY($1::text[])) AS s
WHERE $2::text IS NULL OR (workflow_id, branch, step_id) > ($2::text, $3::text, $4::int4)
ORDER BY workflow_id, branch, step_id
LIMIT $5;

-- name: select_step_winners
-- For rows insert_steps did not write: the recorded steps for the
-- (workflow_id, branch, step_id) keys given as three arrays, each with its
-- workflow's current fence and status (a step may be unrecorded; then only
-- those come back; NULL: the workflow is gone).
SELECT k.workflow_id, k.branch, k.step_id, w.fence AS current_fence,
       w.status AS current_status,
       o.function_name, o.output, o.error, o.child_workflow_id
FROM unnest($1::text[], $2::text[], $3::int4[]) AS k(workflow_id, branch, step_id)
LEFT JOIN {schema}.workflow_status AS w ON w.workflow_id = k.workflow_id
LEFT JOIN LATERAL (
    SELECT function_name, output, error, child_workflow_id FROM {schema}.operation_outputs
    WHERE k.branch = '' AND workflow_id = k.workflow_id AND step_id = k.step_id
    UNION ALL
    SELECT function_name, output, error, child_workflow_id FROM {schema}.branch_outputs
    WHERE k.branch <> '' AND workflow_id = k.workflow_id AND branch = k.branch
      AND step_id = k.step_id) AS o ON true;

-- name: select_step
-- The recorded step $3 of branch $2 of workflow $1, or no row.
SELECT workflow_id, ''::text AS branch, step_id, function_name, output, error,
       child_workflow_id
FROM {schema}.operation_outputs WHERE $2 = '' AND workflow_id = $1 AND step_id = $3
UNION ALL
SELECT workflow_id, branch, step_id, function_name, output, error, child_workflow_id
FROM {schema}.branch_outputs WHERE $2 <> '' AND workflow_id = $1 AND branch = $2 AND step_id = $3;
