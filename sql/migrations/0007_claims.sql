-- Which running process (a runtime instance, not an executor ID: several
-- processes may share one) last claimed each PENDING workflow: by starting,
-- dequeuing, recovering, adopting, resuming or forking it. A process that
-- lost the reply to such a claim finds its own claims that it does not run
-- (reconcile.py) and runs them, without ever taking a workflow another
-- process under the same executor ID is running. NULL: claimed by a release
-- before this column, or ENQUEUED by a client.
--
-- Additive only: a process of the previous release leaves it NULL.
ALTER TABLE workflow_status ADD COLUMN claimed_by text;
