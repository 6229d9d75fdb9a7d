-- name: list_workflows
-- Workflows matching every filter given (a NULL filter matches all), oldest
-- first: $1 IDs, $2 statuses, $3 names, $4 queue names, $5..$6 created_at
-- range (epoch ms, inclusive), $7 app versions, $8 executor IDs, $9 only
-- workflows on a queue, $14 names to leave out. Limit $12 (NULL: all), offset $13.
-- Payloads are read only when asked for ($10 inputs, $11 output and error):
-- otherwise the CASE never touches the column, so a TOASTed payload is neither
-- fetched nor sent. The filters fold away in a custom plan, leaving only the
-- given ones for the planner (indexes: migration 0004). Keep the WHERE clause
-- identical to list_workflows_desc.
SELECT workflow_id, status, name,
       CASE WHEN $10::boolean THEN inputs END AS inputs,
       CASE WHEN $11::boolean THEN output END AS output,
       CASE WHEN $11::boolean THEN error END AS error,
       created_at, updated_at, queue_name, executor_id, app_version, recovery_attempts,
       parent_workflow_id, forked_from, deduplication_id, priority, timeout_ms,
       deadline_epoch_ms
FROM {schema}.workflow_status
WHERE ($1::text[] IS NULL OR workflow_id = ANY($1::text[]))
  AND ($2::text[] IS NULL OR status = ANY($2::text[]))
  AND ($3::text[] IS NULL OR name = ANY($3::text[]))
  AND ($4::text[] IS NULL OR queue_name = ANY($4::text[]))
  AND ($5::int8 IS NULL OR created_at >= $5::int8)
  AND ($6::int8 IS NULL OR created_at <= $6::int8)
  AND ($7::text[] IS NULL OR app_version = ANY($7::text[]))
  AND ($8::text[] IS NULL OR executor_id = ANY($8::text[]))
  AND (NOT $9::boolean OR queue_name IS NOT NULL)
  AND ($14::text[] IS NULL OR name <> ALL($14::text[]))
ORDER BY created_at, workflow_id
LIMIT $12::int8 OFFSET $13::int8;

-- name: list_workflows_desc
-- list_workflows, newest first. (A parameter cannot choose the direction
-- without hiding the created_at order from the planner, hence two blocks.)
SELECT workflow_id, status, name,
       CASE WHEN $10::boolean THEN inputs END AS inputs,
       CASE WHEN $11::boolean THEN output END AS output,
       CASE WHEN $11::boolean THEN error END AS error,
       created_at, updated_at, queue_name, executor_id, app_version, recovery_attempts,
       parent_workflow_id, forked_from, deduplication_id, priority, timeout_ms,
       deadline_epoch_ms
FROM {schema}.workflow_status
WHERE ($1::text[] IS NULL OR workflow_id = ANY($1::text[]))
  AND ($2::text[] IS NULL OR status = ANY($2::text[]))
  AND ($3::text[] IS NULL OR name = ANY($3::text[]))
  AND ($4::text[] IS NULL OR queue_name = ANY($4::text[]))
  AND ($5::int8 IS NULL OR created_at >= $5::int8)
  AND ($6::int8 IS NULL OR created_at <= $6::int8)
  AND ($7::text[] IS NULL OR app_version = ANY($7::text[]))
  AND ($8::text[] IS NULL OR executor_id = ANY($8::text[]))
  AND (NOT $9::boolean OR queue_name IS NOT NULL)
  AND ($14::text[] IS NULL OR name <> ALL($14::text[]))
ORDER BY created_at DESC, workflow_id DESC
LIMIT $12::int8 OFFSET $13::int8;

-- name: list_workflow_steps
-- The recorded steps of workflow $1, the workflow's own sequence and its
-- branches', in tree order: a branch's steps come just before the step of
-- the workflow's own sequence that followed the branch's creation (origin),
-- nested branches after their parent's, each branch's in step order. One row
-- with a NULL step_id when it has none, no row at all when the workflow does
-- not exist.
SELECT o.branch, o.step_id, o.function_name, o.output, o.error, o.child_workflow_id,
       o.started_at, o.completed_at, o.attempts, o.label
FROM {schema}.workflow_status AS w
LEFT JOIN (
    SELECT workflow_id, ''::text AS branch, step_id, step_id AS origin, function_name,
           output, error, child_workflow_id, started_at, completed_at, attempts, label
    FROM {schema}.operation_outputs WHERE workflow_id = $1
    UNION ALL
    SELECT workflow_id, branch, step_id, origin, function_name, output, error,
           child_workflow_id, started_at, completed_at, attempts, label
    FROM {schema}.branch_outputs WHERE workflow_id = $1) AS o ON o.workflow_id = w.workflow_id
WHERE w.workflow_id = $1
ORDER BY o.origin, o.branch = '', string_to_array(o.branch, '.')::int[], o.step_id;

-- name: fork_workflow
-- Record workflow $2 as a copy of workflow $1 (same name and inputs,
-- forked_from $1) with $1's recorded steps before position $3 of its own
-- sequence: those of branch '' whose step_id < $3, and those of every branch
-- created before the workflow reached that position (origin <= $3, see
-- 0006_branches.sql), all of their steps; everything later runs again.
-- Position 0 keeps nothing, not even branches created before the workflow's
-- first own call: that is a restart, from scratch. The events and stream
-- entries the copied steps wrote are copied too (their checkpoints name them;
-- a stream entry of a release before 0.2 has its step's ID as its offset),
-- each event at the value of its latest copied set_event. The copy is claimed by executor $4
-- (PENDING, runtime instance $8) or, when $4 is
-- NULL, ENQUEUED on queue $6 and announced on q:<queue>. App version $5, else
-- the original's. $7 is now (epoch ms). Returns no row when $1 does not exist;
-- else the original's name and inputs, new_id (NULL when ID $2 was already
-- taken: nothing is written then) and taken_name, the name recorded under $2.
WITH original AS (
    SELECT workflow_id, name, inputs, app_name, app_version, branched_steps
    FROM {schema}.workflow_status WHERE workflow_id = $1),
forked AS (
    INSERT INTO {schema}.workflow_status (
        workflow_id, status, name, inputs, app_name, app_version, executor_id,
        created_at, updated_at, queue_name, forked_from, branched_steps, claimed_by)
    SELECT $2, CASE WHEN $4::text IS NULL THEN 'ENQUEUED' ELSE 'PENDING' END,
           name, inputs, app_name, COALESCE($5::text, app_version), $4::text, $7, $7,
           CASE WHEN $4::text IS NULL THEN $6::text END, workflow_id, branched_steps,
           CASE WHEN $4::text IS NOT NULL THEN $8::text END
    FROM original
    ON CONFLICT (workflow_id) DO NOTHING
    RETURNING workflow_id),
copied AS (
    INSERT INTO {schema}.operation_outputs (
        workflow_id, step_id, function_name, output, error, child_workflow_id,
        started_at, completed_at, attempts, label)
    SELECT f.workflow_id, o.step_id, o.function_name, o.output, o.error,
           o.child_workflow_id, o.started_at, o.completed_at, o.attempts, o.label
    FROM {schema}.operation_outputs AS o, forked AS f
    WHERE o.workflow_id = $1 AND o.step_id < $3::int4
    RETURNING '' AS branch, step_id, function_name, output, completed_at),
copied_branches AS (
    INSERT INTO {schema}.branch_outputs (
        workflow_id, branch, step_id, origin, function_name, output, error,
        child_workflow_id, started_at, completed_at, attempts, label)
    SELECT f.workflow_id, b.branch, b.step_id, b.origin, b.function_name, b.output,
           b.error, b.child_workflow_id, b.started_at, b.completed_at, b.attempts, b.label
    FROM {schema}.branch_outputs AS b, forked AS f
    WHERE b.workflow_id = $1 AND b.origin <= $3::int4 AND $3::int4 > 0
    RETURNING branch, step_id, function_name, output, completed_at),
copied_calls AS (
    SELECT * FROM copied UNION ALL SELECT * FROM copied_branches),
copied_events AS (
    INSERT INTO {schema}.workflow_events (workflow_id, key, value, updated_at)
    SELECT DISTINCT ON (e.key) f.workflow_id, e.key, e.value, e.at
    FROM forked AS f, (
        SELECT c.output::json ->> 'key' AS key, (c.output::json -> 'value')::text AS value,
               c.completed_at AS at
        FROM copied_calls AS c
        WHERE c.function_name = 'DBOS.set_event' AND c.output IS NOT NULL) AS e
    ORDER BY e.key, e.at DESC
    RETURNING 1),
copied_entries AS (
    INSERT INTO {schema}.streams (workflow_id, key, "offset", value, closed, created_at)
    SELECT f.workflow_id, s.key, s."offset", s.value, s.closed, s.created_at
    FROM forked AS f, {schema}.streams AS s
    WHERE s.workflow_id = $1 AND EXISTS (
        SELECT 1 FROM copied_calls AS c
        WHERE c.function_name IN ('DBOS.write_stream', 'DBOS.close_stream')
          AND CASE WHEN c.output IS NULL
                   THEN c.branch = '' AND c.step_id = s."offset"
                   ELSE c.output::json ->> 'key' = s.key
                        AND (c.output::json ->> 'offset')::int = s."offset" END)
    RETURNING 1)
SELECT original.name, original.inputs, original.branched_steps, f.workflow_id AS new_id,
       (SELECT name FROM {schema}.workflow_status WHERE workflow_id = $2) AS taken_name,
       (SELECT count(*) FROM copied_calls) AS copied_steps,
       (SELECT count(*) FROM copied_events) + (SELECT count(*) FROM copied_entries)
           AS copied_effects,
       (SELECT count(pg_notify('{schema}', 'q:' || $6::text))
        FROM forked WHERE $4::text IS NULL) AS notified
FROM original LEFT JOIN forked AS f ON true;

-- name: delete_workflow
-- Delete workflow $1 and, when $2, its descendants (by parent_workflow_id),
-- with their steps, messages, events and streams. A deleted workflow that was
-- still PENDING or ENQUEUED is announced on c:<id>, so a runtime running it
-- stops as if cancelled; every one on w:<id>, so waiters re-read (and find it
-- gone). Returns the deleted IDs; no row when $1 does not exist.
WITH RECURSIVE doomed AS (
    SELECT workflow_id FROM {schema}.workflow_status WHERE workflow_id = $1
    UNION
    SELECT w.workflow_id
    FROM {schema}.workflow_status AS w JOIN doomed AS d ON w.parent_workflow_id = d.workflow_id
    WHERE $2::boolean),
steps AS (
    DELETE FROM {schema}.operation_outputs WHERE workflow_id IN (SELECT workflow_id FROM doomed)),
branch_steps AS (
    DELETE FROM {schema}.branch_outputs WHERE workflow_id IN (SELECT workflow_id FROM doomed)),
received AS (
    DELETE FROM {schema}.messages WHERE destination_id IN (SELECT workflow_id FROM doomed)),
events AS (
    DELETE FROM {schema}.workflow_events WHERE workflow_id IN (SELECT workflow_id FROM doomed)),
written AS (
    DELETE FROM {schema}.streams WHERE workflow_id IN (SELECT workflow_id FROM doomed)),
gone AS (
    DELETE FROM {schema}.workflow_status WHERE workflow_id IN (SELECT workflow_id FROM doomed)
    RETURNING workflow_id, status)
SELECT g.workflow_id,
       (SELECT count(pg_notify('{schema}', kinds.k || ':' || g.workflow_id))
        FROM (VALUES ('c'), ('w')) AS kinds(k)
        WHERE kinds.k = 'w' OR g.status IN ('PENDING', 'ENQUEUED')) AS notified
FROM gone AS g;
