-- name: send_message_from_workflow
-- Send message $3 to workflow $1 on topic $2 as step $6 of branch $9 (origin
-- $10) of workflow $5, at $4; announce it unless $8 is false (the destination
-- runs in the sender's process, which wakes it directly).
-- The message is inserted only together with the step's checkpoint, so a
-- replayed send sends nothing; nothing is written if $1 does not exist or if
-- $7 is not the sender's current fence. Commits asynchronously, like every
-- write that only other workflows consume (see the README): a server crash
-- that loses it loses everything that followed it in the WAL too.
-- Announces m:<destination>.
WITH dest AS (SELECT 1 FROM {schema}.workflow_status WHERE workflow_id = $1),
owner AS (SELECT 1 FROM {schema}.workflow_status WHERE workflow_id = $5 AND fence = $7
                    AND status = 'PENDING'),
own AS (
    INSERT INTO {schema}.operation_outputs (
        workflow_id, step_id, function_name, started_at, completed_at)
    SELECT $5, $6, 'DBOS.send', $4, $4
    WHERE $9 = '' AND EXISTS (SELECT 1 FROM dest) AND EXISTS (SELECT 1 FROM owner)
    ON CONFLICT (workflow_id, step_id) DO NOTHING
    RETURNING 1),
branched AS (
    INSERT INTO {schema}.branch_outputs (
        workflow_id, branch, step_id, origin, function_name, started_at, completed_at)
    SELECT $5, $9, $6, $10, 'DBOS.send', $4, $4
    WHERE $9 <> '' AND EXISTS (SELECT 1 FROM dest) AND EXISTS (SELECT 1 FROM owner)
    ON CONFLICT (workflow_id, branch, step_id) DO NOTHING
    RETURNING 1),
msg AS (
    INSERT INTO {schema}.messages (destination_id, topic, payload, created_at)
    SELECT $1, $2, $3, $4 FROM (SELECT 1 FROM own UNION ALL SELECT 1 FROM branched) AS step
    RETURNING destination_id)
SELECT EXISTS (SELECT 1 FROM dest) AS destination_exists,
       (SELECT count(pg_notify('{schema}', 'm:' || destination_id)) FROM msg WHERE $8)
           AS notified,
       (SELECT set_config('synchronous_commit', 'off', true));

-- name: send_message
-- Send message $3 to workflow $1 on topic $2 from outside a workflow, at $4.
-- $5 is an optional idempotency key (scoped to the destination by the
-- caller): a second send under it sends nothing. `same` says whether the
-- message sent before under it had this topic and payload (NULL: nothing was
-- sent before, or it committed after this statement began). Nothing is
-- written if $1 does not exist. Announces m:<destination> when $6.
WITH dest AS (SELECT 1 FROM {schema}.workflow_status WHERE workflow_id = $1),
msg AS (
    INSERT INTO {schema}.messages (destination_id, topic, payload, created_at, idempotency_key)
    SELECT $1, $2, $3, $4, $5 WHERE EXISTS (SELECT 1 FROM dest)
    ON CONFLICT (idempotency_key) DO NOTHING
    RETURNING destination_id)
SELECT EXISTS (SELECT 1 FROM dest) AS destination_exists,
       (SELECT count(pg_notify('{schema}', 'm:' || destination_id)) FROM msg WHERE $6)
           AS notified,
       (SELECT p.topic = $2 AND p.payload = $3 FROM {schema}.messages AS p
        WHERE $5::text IS NOT NULL AND p.idempotency_key = $5
          AND NOT EXISTS (SELECT 1 FROM msg)) AS same;

-- name: receive_message
-- Consume the oldest unconsumed message of workflow $1 on topic $2 and record
-- it as step $3 of branch $6 (origin $7), at $4, in one statement: if the step
-- was already recorded (a replay, or this statement retried after a lost
-- commit acknowledgement) the insert raises a unique violation and the whole
-- statement, consumption included, rolls back. Returns the payload, or no row
-- when none is waiting (or when $5 is not the workflow's current fence).
-- Commits asynchronously: if a server crash loses the consumption, the
-- message is again the oldest on its topic and replay receives it again.
WITH m AS (
    UPDATE {schema}.messages SET consumed_at = $4
    WHERE message_id = (
        SELECT message_id FROM {schema}.messages
        WHERE destination_id = $1 AND topic = $2 AND consumed_at IS NULL
        ORDER BY message_id LIMIT 1
        FOR UPDATE SKIP LOCKED)
      AND EXISTS (SELECT 1 FROM {schema}.workflow_status WHERE workflow_id = $1 AND fence = $5
                    AND status = 'PENDING')
    RETURNING payload, set_config('synchronous_commit', 'off', true) AS async_commit),
own AS (
    INSERT INTO {schema}.operation_outputs (
        workflow_id, step_id, function_name, output, started_at, completed_at)
    SELECT $1, $3, 'DBOS.recv', m.payload, $4, $4 FROM m WHERE $6 = ''
    RETURNING output),
branched AS (
    INSERT INTO {schema}.branch_outputs (
        workflow_id, branch, step_id, origin, function_name, output, started_at,
        completed_at)
    SELECT $1, $6, $3, $7, 'DBOS.recv', m.payload, $4, $4 FROM m WHERE $6 <> ''
    RETURNING output)
SELECT output FROM own
UNION ALL
SELECT output FROM branched;

-- name: set_event
-- Set event $3 of workflow $1 to $4 as its step $2 of branch $7 (origin $8),
-- at $5, with fence $6: the value is written only together with the step's
-- checkpoint, so replay writes nothing. The checkpoint's output records
-- {"key", "value"}, so a fork that copies the step can set the event too.
-- The latest value wins. Announces e:<workflow>. Commits asynchronously, like
-- send_message_from_workflow.
WITH owner AS (SELECT 1 FROM {schema}.workflow_status WHERE workflow_id = $1 AND fence = $6
                    AND status = 'PENDING'),
own AS (
    INSERT INTO {schema}.operation_outputs (
        workflow_id, step_id, function_name, output, started_at, completed_at)
    SELECT $1, $2, 'DBOS.set_event', json_build_object('key', $3::text, 'value', $4::json),
           $5, $5
    WHERE $7 = '' AND EXISTS (SELECT 1 FROM owner)
    ON CONFLICT (workflow_id, step_id) DO NOTHING
    RETURNING 1),
branched AS (
    INSERT INTO {schema}.branch_outputs (
        workflow_id, branch, step_id, origin, function_name, output, started_at,
        completed_at)
    SELECT $1, $7, $2, $8, 'DBOS.set_event',
           json_build_object('key', $3::text, 'value', $4::json), $5, $5
    WHERE $7 <> '' AND EXISTS (SELECT 1 FROM owner)
    ON CONFLICT (workflow_id, branch, step_id) DO NOTHING
    RETURNING 1),
ev AS (
    INSERT INTO {schema}.workflow_events (workflow_id, key, value, updated_at)
    SELECT $1, $3, $4, $5 FROM (SELECT 1 FROM own UNION ALL SELECT 1 FROM branched) AS step
    ON CONFLICT (workflow_id, key)
    DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at
    RETURNING workflow_id)
SELECT count(pg_notify('{schema}', 'e:' || workflow_id)),
       (SELECT set_config('synchronous_commit', 'off', true))
FROM ev;

-- name: select_event
-- The value of event $2 of workflow $1, or no row.
SELECT value FROM {schema}.workflow_events WHERE workflow_id = $1 AND key = $2;

-- name: record_event
-- Inside workflow $3 (fence $6), read event $2 of workflow $1 and record the
-- value as step $4 of branch $7 (origin $8), at $5, in one statement. Returns
-- the value (NULL: not set yet) and whether this statement recorded it (false
-- with a value: the step was recorded before; read the recorded step).
-- Commits asynchronously: a lost record is simply read again on replay.
WITH e AS (SELECT value FROM {schema}.workflow_events WHERE workflow_id = $1 AND key = $2),
owner AS (SELECT 1 FROM {schema}.workflow_status WHERE workflow_id = $3 AND fence = $6
                    AND status = 'PENDING'),
own AS (
    INSERT INTO {schema}.operation_outputs (
        workflow_id, step_id, function_name, output, started_at, completed_at)
    SELECT $3, $4, 'DBOS.get_event', e.value, $5, $5 FROM e
    WHERE $7 = '' AND EXISTS (SELECT 1 FROM owner)
    ON CONFLICT (workflow_id, step_id) DO NOTHING
    RETURNING 1),
branched AS (
    INSERT INTO {schema}.branch_outputs (
        workflow_id, branch, step_id, origin, function_name, output, started_at,
        completed_at)
    SELECT $3, $7, $4, $8, 'DBOS.get_event', e.value, $5, $5 FROM e
    WHERE $7 <> '' AND EXISTS (SELECT 1 FROM owner)
    ON CONFLICT (workflow_id, branch, step_id) DO NOTHING
    RETURNING 1)
SELECT (SELECT value FROM e) AS value,
       EXISTS (SELECT 1 FROM own UNION ALL SELECT 1 FROM branched) AS recorded,
       (SELECT set_config('synchronous_commit', 'off', true));

-- name: select_events
-- Every event of workflow $1 with its latest value.
SELECT key, value FROM {schema}.workflow_events WHERE workflow_id = $1 ORDER BY key;
