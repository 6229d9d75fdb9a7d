-- name: select_histories
-- The histories of workflows $1 and, when $2, of all their descendants (by
-- parent_workflow_id), for export (history.py): each workflow's row, and as
-- JSON arrays its recorded calls (its own sequence, branch '', and its
-- branches', in tree order as list_workflow_steps gives them; origin NULL for
-- branch ''), its events by key, its stream entries by key and offset, and the
-- messages sent to it, oldest first. Payload columns travel as the text they
-- are stored as. One statement, so one snapshot: a running workflow is read
-- with exactly the calls its row had then. The IDs given come first, in the
-- order given, then the descendants by created_at. No row for an ID that does
-- not exist.
WITH RECURSIVE wanted AS (
    SELECT w.workflow_id, u.ord
    FROM unnest($1::text[]) WITH ORDINALITY AS u(workflow_id, ord)
    JOIN {schema}.workflow_status AS w ON w.workflow_id = u.workflow_id
    UNION
    SELECT w.workflow_id, NULL::int8
    FROM {schema}.workflow_status AS w JOIN wanted AS p ON w.parent_workflow_id = p.workflow_id
    WHERE $2::boolean),
chosen AS (
    SELECT workflow_id, min(ord) AS ord FROM wanted GROUP BY workflow_id)
SELECT w.workflow_id, w.status, w.name, w.inputs, w.output, w.error, w.app_name,
       w.app_version, w.executor_id, w.created_at, w.updated_at, w.recovery_attempts,
       w.queue_name, w.parent_workflow_id, w.forked_from, w.deduplication_id, w.priority,
       w.timeout_ms, w.deadline_epoch_ms, w.started_at, w.queue_partition_key, w.not_before,
       w.branched_steps,
       (SELECT coalesce(json_agg(json_build_object(
                    'branch', c.branch, 'step_id', c.step_id, 'origin', c.origin,
                    'function_name', c.function_name, 'output', c.output, 'error', c.error,
                    'child_workflow_id', c.child_workflow_id, 'started_at', c.started_at,
                    'completed_at', c.completed_at, 'attempts', c.attempts, 'label', c.label)
                ORDER BY coalesce(c.origin, c.step_id), c.branch = '',
                         string_to_array(c.branch, '.')::int[], c.step_id), '[]'::json)
        FROM (SELECT ''::text AS branch, o.step_id, NULL::int4 AS origin, o.function_name,
                     o.output, o.error, o.child_workflow_id, o.started_at, o.completed_at,
                     o.attempts, o.label
              FROM {schema}.operation_outputs AS o WHERE o.workflow_id = w.workflow_id
              UNION ALL
              SELECT b.branch, b.step_id, b.origin, b.function_name, b.output, b.error,
                     b.child_workflow_id, b.started_at, b.completed_at, b.attempts, b.label
              FROM {schema}.branch_outputs AS b WHERE b.workflow_id = w.workflow_id) AS c
       ) AS calls,
       (SELECT coalesce(json_agg(json_build_object(
                    'key', e.key, 'value', e.value, 'updated_at', e.updated_at)
                ORDER BY e.key), '[]'::json)
        FROM {schema}.workflow_events AS e WHERE e.workflow_id = w.workflow_id
       ) AS events,
       (SELECT coalesce(json_agg(json_build_object(
                    'key', s.key, 'offset', s."offset", 'value', s.value, 'closed', s.closed,
                    'created_at', s.created_at)
                ORDER BY s.key, s."offset"), '[]'::json)
        FROM {schema}.streams AS s WHERE s.workflow_id = w.workflow_id
       ) AS stream_entries,
       (SELECT coalesce(json_agg(json_build_object(
                    'topic', m.topic, 'payload', m.payload, 'created_at', m.created_at,
                    'consumed_at', m.consumed_at, 'idempotency_key', m.idempotency_key)
                ORDER BY m.message_id), '[]'::json)
        FROM {schema}.messages AS m WHERE m.destination_id = w.workflow_id
       ) AS received_messages
FROM chosen JOIN {schema}.workflow_status AS w ON w.workflow_id = chosen.workflow_id
ORDER BY chosen.ord NULLS LAST, w.created_at, w.workflow_id;

-- name: insert_histories
-- Record imported workflow histories (history.py), all or nothing. Arrays,
-- one element per row: workflows $1..$23, their recorded calls $24..$35
-- (branch '' to operation_outputs, the others to branch_outputs), events
-- $36..$39, stream entries $40..$45 and messages $46..$51 (inserted in the
-- order given, so their new message_ids keep it). If any of the workflow IDs
-- is taken, nothing is written and the rows name the taken IDs (taken true);
-- else the rows name the imported workflows (taken false). Rows are written
-- as given, with fence 0 and no claimant (claimed_by NULL: a PENDING one is
-- recovered or adopted by the rules for a claim of an earlier release, see
-- 0008_instances.sql). An ENQUEUED one joins the end of its queue (a new
-- enqueue_seq, in the order given) and is announced on q:<queue>. An ID
-- recorded by a concurrent statement after this one's snapshot violates
-- workflow_status_pkey instead: the whole statement fails.
WITH taken AS (
    SELECT workflow_id FROM {schema}.workflow_status WHERE workflow_id = ANY($1::text[])),
free AS (
    SELECT NOT EXISTS (SELECT 1 FROM taken) AS ok),
imported AS (
    INSERT INTO {schema}.workflow_status (
        workflow_id, status, name, inputs, output, error, app_name, app_version, executor_id,
        created_at, updated_at, recovery_attempts, queue_name, parent_workflow_id, forked_from,
        deduplication_id, priority, timeout_ms, deadline_epoch_ms, started_at,
        queue_partition_key, not_before, branched_steps, enqueue_seq)
    SELECT u.workflow_id, u.status, u.name, u.inputs, u.output, u.error, u.app_name,
           u.app_version, u.executor_id, u.created_at, u.updated_at, u.recovery_attempts,
           u.queue_name, u.parent_workflow_id, u.forked_from, u.deduplication_id, u.priority,
           u.timeout_ms, u.deadline_epoch_ms, u.started_at, u.queue_partition_key,
           u.not_before, u.branched_steps,
           CASE WHEN u.status = 'ENQUEUED' THEN nextval('{schema}.workflow_enqueue_seq') END
    FROM free,
         unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
                $7::text[], $8::text[], $9::text[], $10::int8[], $11::int8[], $12::int4[],
                $13::text[], $14::text[], $15::text[], $16::text[], $17::int4[], $18::int8[],
                $19::int8[], $20::int8[], $21::text[], $22::int8[], $23::boolean[])
         WITH ORDINALITY
         AS u(workflow_id, status, name, inputs, output, error, app_name, app_version,
              executor_id, created_at, updated_at, recovery_attempts, queue_name,
              parent_workflow_id, forked_from, deduplication_id, priority, timeout_ms,
              deadline_epoch_ms, started_at, queue_partition_key, not_before, branched_steps,
              ord)
    WHERE free.ok
    ORDER BY u.ord
    RETURNING workflow_id, status, queue_name),
calls AS (
    SELECT c.*
    FROM free,
         unnest($24::text[], $25::text[], $26::int4[], $27::int4[], $28::text[], $29::text[],
                $30::text[], $31::text[], $32::int8[], $33::int8[], $34::int4[], $35::text[])
         AS c(workflow_id, branch, step_id, origin, function_name, output, error,
              child_workflow_id, started_at, completed_at, attempts, label)
    WHERE free.ok),
own_calls AS (
    INSERT INTO {schema}.operation_outputs (
        workflow_id, step_id, function_name, output, error, child_workflow_id, started_at,
        completed_at, attempts, label)
    SELECT workflow_id, step_id, function_name, output, error, child_workflow_id, started_at,
           completed_at, attempts, label
    FROM calls WHERE branch = ''),
branch_calls AS (
    INSERT INTO {schema}.branch_outputs (
        workflow_id, branch, step_id, origin, function_name, output, error,
        child_workflow_id, started_at, completed_at, attempts, label)
    SELECT workflow_id, branch, step_id, origin, function_name, output, error,
           child_workflow_id, started_at, completed_at, attempts, label
    FROM calls WHERE branch <> ''),
imported_events AS (
    INSERT INTO {schema}.workflow_events (workflow_id, key, value, updated_at)
    SELECT e.workflow_id, e.key, e.value, e.updated_at
    FROM free, unnest($36::text[], $37::text[], $38::text[], $39::int8[])
         AS e(workflow_id, key, value, updated_at)
    WHERE free.ok),
imported_entries AS (
    INSERT INTO {schema}.streams (workflow_id, key, "offset", value, closed, created_at)
    SELECT s.workflow_id, s.key, s."offset", s.value, s.closed, s.created_at
    FROM free, unnest($40::text[], $41::text[], $42::int4[], $43::text[], $44::int8[],
                      $45::boolean[])
         AS s(workflow_id, key, "offset", value, created_at, closed)
    WHERE free.ok),
imported_messages AS (
    INSERT INTO {schema}.messages (
        destination_id, topic, payload, created_at, consumed_at, idempotency_key)
    SELECT m.destination_id, m.topic, m.payload, m.created_at, m.consumed_at,
           m.idempotency_key
    FROM free, unnest($46::text[], $47::text[], $48::text[], $49::int8[], $50::int8[],
                      $51::text[]) WITH ORDINALITY
         AS m(destination_id, topic, payload, created_at, consumed_at, idempotency_key, ord)
    WHERE free.ok
    ORDER BY m.ord)
SELECT t.workflow_id, true AS taken, 0::int8 AS notified FROM taken AS t
UNION ALL
SELECT i.workflow_id, false,
       (SELECT count(pg_notify('{schema}', 'q:' || queue_name))
        FROM imported WHERE status = 'ENQUEUED' AND queue_name IS NOT NULL)
FROM imported AS i;
