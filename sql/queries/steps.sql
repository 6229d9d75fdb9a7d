-- name: insert_steps
-- Checkpoint completed steps, many rows in one statement (group commit).
-- The first writer of (workflow_id, step_id) wins; a row whose fence ($9)
-- is not the workflow's current one is not written (its writer lost the
-- workflow to another runtime). RETURNING names the rows written now.
INSERT INTO operation_outputs (
    workflow_id, step_id, function_name, output, error, child_workflow_id,
    started_at, completed_at)
SELECT u.workflow_id, u.step_id, u.function_name, u.output, u.error, u.child_workflow_id,
       u.started_at, u.completed_at
FROM unnest($1::text[], $2::int4[], $3::text[], $4::text[], $5::text[],
            $6::text[], $7::int8[], $8::int8[], $9::int4[])
     AS u(workflow_id, step_id, function_name, output, error, child_workflow_id,
          started_at, completed_at, fence)
JOIN workflow_status AS w ON w.workflow_id = u.workflow_id AND w.fence = u.fence
ON CONFLICT (workflow_id, step_id) DO NOTHING
RETURNING workflow_id, step_id;

-- name: insert_step_if_absent
-- insert_steps for a batch of one: the single-row form is cheaper than unnest.
-- The command tag (INSERT 0 1 or INSERT 0 0) says whether it was written.
INSERT INTO operation_outputs (
    workflow_id, step_id, function_name, output, error, child_workflow_id,
    started_at, completed_at)
SELECT $1, $2, $3, $4, $5, $6, $7, $8
WHERE EXISTS (SELECT 1 FROM workflow_status WHERE workflow_id = $1 AND fence = $9)
ON CONFLICT (workflow_id, step_id) DO NOTHING;

-- name: insert_step
-- Checkpoint one step inside a caller's transaction (@DBOS.transaction); a
-- conflict aborts that transaction, so the body commits exactly once. INSERT
-- 0 0 means the fence ($9) is stale: the caller rolls back.
INSERT INTO operation_outputs (
    workflow_id, step_id, function_name, output, error, child_workflow_id,
    started_at, completed_at)
SELECT $1, $2, $3, $4, $5, $6, $7, $8
WHERE EXISTS (SELECT 1 FROM workflow_status WHERE workflow_id = $1 AND fence = $9);

-- name: select_steps_of
-- Recorded steps of workflows $1, read once when they (re)start.
SELECT workflow_id, step_id, function_name, output, error, child_workflow_id
FROM operation_outputs WHERE workflow_id = ANY($1::text[]);

-- name: select_step_winners
-- For rows insert_steps did not write: the recorded steps for the
-- (workflow_id, step_id) pairs given as two arrays, each with its workflow's
-- current fence (a step may be unrecorded; then only the fence comes back).
SELECT k.workflow_id, k.step_id, w.fence AS current_fence,
       o.function_name, o.output, o.error, o.child_workflow_id
FROM unnest($1::text[], $2::int4[]) AS k(workflow_id, step_id)
LEFT JOIN workflow_status AS w ON w.workflow_id = k.workflow_id
LEFT JOIN operation_outputs AS o ON o.workflow_id = k.workflow_id AND o.step_id = k.step_id;

-- name: select_steps_by_key
-- Recorded steps for the (workflow_id, step_id) pairs given as two arrays.
SELECT o.workflow_id, o.step_id, o.function_name, o.output, o.error, o.child_workflow_id
FROM operation_outputs AS o
JOIN unnest($1::text[], $2::int4[]) AS k(workflow_id, step_id)
  ON o.workflow_id = k.workflow_id AND o.step_id = k.step_id;
