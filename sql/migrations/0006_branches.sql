-- Concurrent branches inside a workflow (asyncio.gather, TaskGroup,
-- create_task, anyio task groups). A durable call is identified by its branch
-- and its order within that branch, never by timing. A branch is named by the
-- positions at which each task on its path was created: '0' is the first task
-- the workflow created, '2.1' the second task created by the workflow's third.
-- '' is the workflow's own sequence.
--
-- Additive only. Calls of the workflow's own sequence stay in
-- operation_outputs, unchanged, so a process of the previous release can
-- share this database during a deploy; calls made in branches go to a new
-- table, keyed by (workflow_id, branch, step_id).

-- origin: how many calls the workflow's own sequence had made when it created
-- the branch's top-level ancestor. fork_workflow(id, start_step) keeps a
-- branch (with all its steps) when origin <= start_step: it was created before
-- the workflow reached the step the fork runs again.
CREATE TABLE branch_outputs (
    workflow_id        text NOT NULL,
    branch             text NOT NULL CHECK (branch <> ''),
    step_id            integer NOT NULL,
    origin             integer NOT NULL,
    function_name      text NOT NULL,
    output             text,
    error              text,
    child_workflow_id  text,
    started_at         bigint,
    completed_at       bigint,
    PRIMARY KEY (workflow_id, branch, step_id)
);

-- True for every workflow this release records. Rows written by earlier
-- releases (before this migration, or by an older process during a deploy)
-- keep false: their steps were numbered by one counter shared by all of a
-- workflow's tasks, and replay numbers them the same way.
ALTER TABLE workflow_status ADD COLUMN branched_steps boolean NOT NULL DEFAULT false;
