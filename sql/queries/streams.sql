-- name: write_stream
-- Append to stream $3 of workflow $1 as its step $2 of branch $9 (origin $10),
-- at $6: value $4, or the closing marker when $5. The entry takes the next
-- offset of the stream (a workflow's writes go one at a time, so offsets are
-- gapless and commit in order; step IDs repeat across branches, so they
-- cannot be offsets). The row is written only together with the step's
-- checkpoint, so replay writes nothing; the checkpoint's output records
-- {"key", "offset"}, so a fork that copies the step copies the entry too.
-- Announces s:<workflow> only when $7: busy streams announce at most once per
-- short window (the runtime sends a trailing announcement). $8 is the
-- writer's fence.
WITH owner AS (SELECT 1 FROM {schema}.workflow_status WHERE workflow_id = $1 AND fence = $8
                    AND status = 'PENDING'),
pos AS (
    SELECT coalesce(max("offset"), -1) + 1 AS "offset",
           json_build_object('key', $3::text, 'offset', coalesce(max("offset"), -1) + 1)
               AS written
    FROM {schema}.streams WHERE workflow_id = $1 AND key = $3),
own AS (
    INSERT INTO {schema}.operation_outputs (
        workflow_id, step_id, function_name, output, started_at, completed_at)
    SELECT $1, $2, CASE WHEN $5 THEN 'DBOS.close_stream' ELSE 'DBOS.write_stream' END,
           pos.written, $6, $6
    FROM pos
    WHERE $9 = '' AND EXISTS (SELECT 1 FROM owner)
    ON CONFLICT (workflow_id, step_id) DO NOTHING
    RETURNING 1),
branched AS (
    INSERT INTO {schema}.branch_outputs (
        workflow_id, branch, step_id, origin, function_name, output, started_at,
        completed_at)
    SELECT $1, $9, $2, $10,
           CASE WHEN $5 THEN 'DBOS.close_stream' ELSE 'DBOS.write_stream' END,
           pos.written, $6, $6
    FROM pos
    WHERE $9 <> '' AND EXISTS (SELECT 1 FROM owner)
    ON CONFLICT (workflow_id, branch, step_id) DO NOTHING
    RETURNING 1),
s AS (
    INSERT INTO {schema}.streams (workflow_id, key, "offset", value, closed, created_at)
    SELECT $1, $3, pos."offset", $4, $5, $6
    FROM pos, (SELECT 1 FROM own UNION ALL SELECT 1 FROM branched) AS step
    RETURNING workflow_id)
SELECT count(pg_notify('{schema}', 's:' || workflow_id)) FROM s WHERE $7;

-- name: notify_stream
-- The trailing announcement of writes to workflow $1's streams.
SELECT pg_notify('{schema}', 's:' || $1::text);

-- name: read_stream
-- Entries of stream $2 of workflow $1 after offset $3, in order, with the
-- workflow's status (a stream also ends when its workflow has finished).
SELECT s."offset", s.value, s.closed, w.status
FROM (SELECT status FROM {schema}.workflow_status WHERE workflow_id = $1) AS w
LEFT JOIN LATERAL (
    SELECT "offset", value, closed FROM {schema}.streams
    WHERE workflow_id = $1 AND key = $2 AND "offset" > $3
    ORDER BY "offset") AS s ON true;
