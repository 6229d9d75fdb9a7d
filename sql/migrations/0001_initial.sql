-- The system tables of dbos_async. Times are epoch milliseconds (bigint);
-- payloads are JSON text written by dbos_async.serialization.

CREATE TABLE workflow_status (
    workflow_id         text PRIMARY KEY,
    status              text NOT NULL,
    name                text NOT NULL,
    inputs              text,
    output              text,
    error               text,
    app_name            text,
    app_version         text,
    executor_id         text,
    created_at          bigint NOT NULL,
    updated_at          bigint NOT NULL,
    recovery_attempts   integer NOT NULL DEFAULT 0,
    queue_name          text,
    parent_workflow_id  text,
    forked_from         text,
    deduplication_id    text,
    priority            integer NOT NULL DEFAULT 0,
    timeout_ms          bigint,
    deadline_epoch_ms   bigint,
    CONSTRAINT workflow_status_status_check CHECK (status IN (
        'ENQUEUED', 'PENDING', 'SUCCESS', 'ERROR', 'CANCELLED',
        'MAX_RECOVERY_ATTEMPTS_EXCEEDED'))
);

-- Recovery looks up this executor's PENDING workflows of one app version.
CREATE INDEX workflow_status_pending_idx
    ON workflow_status (executor_id, app_version) WHERE status = 'PENDING';
CREATE INDEX workflow_status_created_at_idx ON workflow_status (created_at);
CREATE INDEX workflow_status_parent_idx
    ON workflow_status (parent_workflow_id) WHERE parent_workflow_id IS NOT NULL;

-- One row per completed step; (workflow_id, step_id) is the checkpoint key and
-- the first writer wins. No foreign key to workflow_status: the check would
-- cost every checkpoint an index probe and a row lock on the workflow's row,
-- and the runtime always writes the workflow's row first (deletes remove both).
CREATE TABLE operation_outputs (
    workflow_id        text NOT NULL,
    step_id            integer NOT NULL,
    function_name      text NOT NULL,
    output             text,
    error              text,
    child_workflow_id  text,
    started_at         bigint,
    completed_at       bigint,
    PRIMARY KEY (workflow_id, step_id)
);
