-- Durable queues and cron schedules. Additive only: new nullable columns (no
-- table rewrite), new indexes, one sequence, one table.

-- started_at           when a worker dequeued it (database clock): the rate limiter counts these
-- queue_partition_key  a partitioned queue applies its limits per key; NULL otherwise
-- not_before           delay_seconds: not dequeued before this time (database clock)
-- enqueue_seq          FIFO order within a priority, from one sequence (clocks of
--                      different processes cannot order enqueues)
ALTER TABLE workflow_status
    ADD COLUMN started_at bigint,
    ADD COLUMN queue_partition_key text,
    ADD COLUMN not_before bigint,
    ADD COLUMN enqueue_seq bigint;

CREATE SEQUENCE workflow_enqueue_seq;

-- The claim: a queue's ENQUEUED rows in dequeue order.
CREATE INDEX workflow_status_enqueued_idx
    ON workflow_status (queue_name, priority, enqueue_seq) WHERE status = 'ENQUEUED';

-- Concurrency limits count a queue's PENDING rows (per executor for worker_concurrency).
CREATE INDEX workflow_status_queue_pending_idx
    ON workflow_status (queue_name, queue_partition_key, executor_id)
    WHERE status = 'PENDING' AND queue_name IS NOT NULL;

-- The rate limiter counts a queue's starts in the last period.
CREATE INDEX workflow_status_queue_started_idx
    ON workflow_status (queue_name, started_at) INCLUDE (queue_partition_key)
    WHERE started_at IS NOT NULL;

-- A worker idle on a delayed queue sleeps until the earliest not_before.
CREATE INDEX workflow_status_not_before_idx
    ON workflow_status (queue_name, not_before)
    WHERE status = 'ENQUEUED' AND not_before IS NOT NULL;

-- Deduplication: one live (ENQUEUED or PENDING) workflow per ID and queue. Its
-- name is how systemdb/pool.py recognises the violation.
CREATE UNIQUE INDEX workflow_status_dedup_idx
    ON workflow_status (queue_name, deduplication_id)
    WHERE deduplication_id IS NOT NULL AND status IN ('ENQUEUED', 'PENDING');

-- The latest tick started per cron schedule: catch_up resumes after it.
CREATE TABLE schedule_ticks (
    schedule_name  text PRIMARY KEY,
    last_tick_ms   bigint NOT NULL,
    updated_at     bigint NOT NULL
);
