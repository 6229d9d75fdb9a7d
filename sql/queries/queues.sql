-- name: enqueue_workflow
-- Record workflow $1 as ENQUEUED on queue $7 and announce it on q:<queue>
-- (delivered on commit). $11 delays it by that many milliseconds; $12 is
-- its timeout, which starts when it is dequeued; $14 a deadline inherited
-- from the workflow that enqueued it. Now is $15, or (NULL) the database's
-- clock; a test's virtual clock passes its time.
-- No version ($5 NULL) means the latest one: the latest registered version
-- a live instance runs (the live_versions view of 0010_app_versions.sql, at
-- that now); while no version has a live runtime, any version. An existing
-- ID is left as it is: `inserted` is 0 and `existing_name` names its
-- function (read from the statement's snapshot, so NULL if it committed
-- meanwhile). A live duplicate of ($7, $9) violates workflow_status_dedup_idx.
WITH clock AS (SELECT coalesce($15::int8, (extract(epoch FROM clock_timestamp()) * 1000)::int8) AS now_ms),
inserted AS (
    INSERT INTO {schema}.workflow_status (
        workflow_id, status, name, inputs, app_name, app_version, created_at, updated_at,
        queue_name, queue_partition_key, deduplication_id, priority, not_before,
        timeout_ms, parent_workflow_id, deadline_epoch_ms, enqueue_seq, branched_steps,
        trace_context)
    VALUES ($1, 'ENQUEUED', $2, $3, $4,
            coalesce($5, (SELECT a.version FROM {schema}.app_versions AS a, clock
                          WHERE EXISTS (
                              SELECT 1 FROM {schema}.instances AS i
                              WHERE i.app_version = a.version
                                AND i.heartbeat_at >= clock.now_ms - 3 * i.heartbeat_ms)
                          ORDER BY a.latest_at DESC, a.version LIMIT 1)),
            $6, $6, $7, $8, $9, $10,
            CASE WHEN $11::int8 IS NOT NULL THEN (SELECT now_ms FROM clock) + $11 END,
            $12, $13, $14, nextval('{schema}.workflow_enqueue_seq'), true, $16)
    ON CONFLICT (workflow_id) DO NOTHING
    RETURNING queue_name)
SELECT (SELECT count(pg_notify('{schema}', 'q:' || queue_name)) FROM inserted) AS inserted,
       (SELECT name FROM {schema}.workflow_status WHERE workflow_id = $1) AS existing_name;

-- name: enqueue_workflows
-- enqueue_workflow for many rows in one statement (group commit), in the
-- order given; $15 is now (NULL: the database's clock). Rows whose
-- workflow_id exists are skipped; RETURNING names the inserted ones; a row
-- without a version goes to the latest. One live duplicate of a
-- deduplication ID fails the whole statement (the caller then enqueues the
-- rows one by one).
WITH clock AS (SELECT coalesce($15::int8, (extract(epoch FROM clock_timestamp()) * 1000)::int8) AS now_ms),
inserted AS (
    INSERT INTO {schema}.workflow_status (
        workflow_id, status, name, inputs, app_name, app_version, created_at, updated_at,
        queue_name, queue_partition_key, deduplication_id, priority, not_before,
        timeout_ms, parent_workflow_id, deadline_epoch_ms, enqueue_seq, branched_steps,
        trace_context)
    SELECT u.workflow_id, 'ENQUEUED', u.name, u.inputs, u.app_name,
           coalesce(u.app_version, (SELECT a.version FROM {schema}.app_versions AS a, clock
                                    WHERE EXISTS (
                                        SELECT 1 FROM {schema}.instances AS i
                                        WHERE i.app_version = a.version
                                          AND i.heartbeat_at >= clock.now_ms - 3 * i.heartbeat_ms)
                                    ORDER BY a.latest_at DESC, a.version LIMIT 1)),
           u.now_ms, u.now_ms, u.queue_name, u.partition_key, u.deduplication_id, u.priority,
           CASE WHEN u.delay_ms IS NOT NULL THEN (SELECT now_ms FROM clock) + u.delay_ms END,
           u.timeout_ms, u.parent_workflow_id, u.deadline_epoch_ms,
           nextval('{schema}.workflow_enqueue_seq'), true, u.trace_context
    FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::int8[],
                $7::text[], $8::text[], $9::text[], $10::int4[], $11::int8[], $12::int8[],
                $13::text[], $14::int8[], $16::text[])
         WITH ORDINALITY
         AS u(workflow_id, name, inputs, app_name, app_version, now_ms, queue_name,
              partition_key, deduplication_id, priority, delay_ms, timeout_ms,
              parent_workflow_id, deadline_epoch_ms, trace_context, ord)
    ORDER BY u.ord
    ON CONFLICT (workflow_id) DO NOTHING
    RETURNING workflow_id, queue_name)
SELECT i.workflow_id, pg_notify('{schema}', 'q:' || i.queue_name) FROM inserted AS i;

-- name: lock_queue
-- Serialize the claimers of queue $1 (partition $2, NULL: the whole queue)
-- until the end of the transaction. Run it as its own statement, BEFORE
-- claim_queued_workflows: a statement's snapshot is taken when it starts, so
-- only a claim that starts after the lock is granted sees every earlier claim.
SELECT pg_advisory_xact_lock(hashtext('{schema}' || ':queue:' || $1),
                             hashtext(coalesce($2::text, '')));

-- name: claim_queued_workflows
-- Claim up to $5 ENQUEUED workflows of queue $1 (partition $2, NULL: any) for
-- executor $3 at app version $4, within the limits: at most $6 PENDING in the
-- queue, $7 PENDING on this executor, and $8 starts in any $9 ms; SKIP LOCKED.
-- Lower priority first, FIFO within a priority. Claimed rows become PENDING
-- with started_at = now (database clock), a new fence (see 0003_failover.sql)
-- and, if $10, a deadline of $13 + their timeout (or the deadline inherited
-- from the workflow that enqueued them, if that is earlier). $13 is now by the
-- claimer's clock: a deadline is enforced by the host that runs the workflow,
-- on its own clock, like SetWorkflowTimeout's; by the database's clock, a host
-- whose clock is off would enforce it that much early or late. Only workflows named in $11
-- (registered here) are claimed, so a process never takes work it cannot run;
-- runtime instance $12 holds the claim (claimed_by, 0007_claims.sql).
-- A workflow recorded by an earlier release that has recorded no step yet has
-- no flat-numbered history to stay compatible with: its claim switches it to
-- branch IDs (branched_steps, 0006_branches.sql).
-- Returns one row per claimed workflow (has_steps: it ran before), or a single
-- row with a NULL workflow_id; every row carries retry_in_ms, the
-- milliseconds until the limiter or a delayed row allows another start (NULL:
-- nothing is due until a notification). Run after lock_queue, in its transaction.
-- The limiter and delays use $14 as now (NULL: the database's clock).
WITH clock AS MATERIALIZED (
    SELECT coalesce($14::int8, (extract(epoch FROM clock_timestamp()) * 1000)::int8) AS now_ms),
running AS (
    SELECT count(*) AS total, count(*) FILTER (WHERE executor_id = $3) AS mine
    FROM {schema}.workflow_status
    WHERE queue_name = $1 AND status = 'PENDING'
      AND ($2::text IS NULL OR queue_partition_key = $2)
      AND ($6::int IS NOT NULL OR $7::int IS NOT NULL)),
recent AS (
    SELECT count(*) AS started, min(started_at) AS oldest
    FROM {schema}.workflow_status, clock
    WHERE queue_name = $1 AND started_at > clock.now_ms - $9::int8
      AND ($2::text IS NULL OR queue_partition_key = $2)
      AND $8::int IS NOT NULL),
room AS (
    SELECT greatest(0, least($5::int,
                             coalesce($6::int - running.total, $5::int),
                             coalesce($7::int - running.mine, $5::int),
                             coalesce($8::int - recent.started, $5::int))) AS n
    FROM running, recent),
picked AS (
    SELECT w.workflow_id
    FROM {schema}.workflow_status AS w
    WHERE w.queue_name = $1 AND w.status = 'ENQUEUED'
      AND ($2::text IS NULL OR w.queue_partition_key = $2)
      AND (w.not_before IS NULL OR w.not_before <= (SELECT now_ms FROM clock))
      AND (w.app_version IS NULL OR w.app_version = $4)
      AND w.name = ANY($11::text[])
    ORDER BY w.priority, w.enqueue_seq
    LIMIT (SELECT n FROM room)
    FOR UPDATE OF w SKIP LOCKED),
claimed AS (
    UPDATE {schema}.workflow_status AS w
    SET status = 'PENDING', executor_id = $3, claimed_by = $12, app_version = $4,
        fence = w.fence + 1,
        started_at = clock.now_ms, updated_at = clock.now_ms,
        branched_steps = w.branched_steps OR NOT EXISTS (
            SELECT 1 FROM {schema}.operation_outputs AS o WHERE o.workflow_id = w.workflow_id),
        deadline_epoch_ms = CASE WHEN $10::bool AND w.timeout_ms IS NOT NULL
                                 THEN least($13::int8 + w.timeout_ms, w.deadline_epoch_ms)
                                 ELSE w.deadline_epoch_ms END
    FROM picked, clock
    WHERE w.workflow_id = picked.workflow_id
    RETURNING w.workflow_id, w.name, w.inputs, w.deadline_epoch_ms, w.fence,
              w.branched_steps, w.trace_context, w.created_at, w.started_at,
              EXISTS (SELECT 1 FROM {schema}.operation_outputs AS o
                      WHERE o.workflow_id = w.workflow_id)
              OR EXISTS (SELECT 1 FROM {schema}.branch_outputs AS b
                         WHERE b.workflow_id = w.workflow_id) AS has_steps),
wake AS MATERIALIZED (
    SELECT least(
               CASE WHEN $8::int IS NOT NULL
                         AND recent.started + (SELECT count(*) FROM claimed) >= $8::int
                    THEN coalesce(recent.oldest, clock.now_ms) + $9::int8 END,
               (SELECT min(d.not_before) FROM {schema}.workflow_status AS d
                WHERE d.queue_name = $1 AND d.status = 'ENQUEUED'
                  AND d.not_before > clock.now_ms
                  AND ($2::text IS NULL OR d.queue_partition_key = $2))
           ) - clock.now_ms AS retry_in_ms
    FROM recent, clock)
SELECT claimed.workflow_id, claimed.name, claimed.inputs, claimed.deadline_epoch_ms,
       claimed.fence, claimed.branched_steps, claimed.has_steps, claimed.trace_context,
       claimed.created_at, claimed.started_at, wake.retry_in_ms
FROM wake LEFT JOIN claimed ON true;

-- name: select_queue_partitions
-- The partition keys of queue $1 that hold ENQUEUED workflows.
SELECT DISTINCT queue_partition_key FROM {schema}.workflow_status
WHERE queue_name = $1 AND status = 'ENQUEUED' AND queue_partition_key IS NOT NULL;

-- name: select_queue_depths
-- Per queue with waiting or running work (the dashboard's queues page, the
-- fleet gauges of contrib/prometheus.py): ENQUEUED and PENDING counts, the
-- oldest ENQUEUED workflow's created_at, and how many partitions hold work.
SELECT queue_name,
       count(*) FILTER (WHERE status = 'ENQUEUED') AS enqueued,
       count(*) FILTER (WHERE status = 'PENDING') AS pending,
       min(created_at) FILTER (WHERE status = 'ENQUEUED') AS oldest_enqueued,
       count(DISTINCT queue_partition_key) AS partitions
FROM {schema}.workflow_status
WHERE queue_name IS NOT NULL AND status IN ('ENQUEUED', 'PENDING')
GROUP BY queue_name
ORDER BY queue_name;
