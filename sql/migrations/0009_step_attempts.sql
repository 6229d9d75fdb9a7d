-- For people reading a workflow's steps (`workflow steps`, list_workflow_steps):
--
-- attempts: how many times a step's body ran before its outcome was recorded
-- (its retries plus one). NULL for the calls that have no body of their own
-- (sleep, messages, events, child workflows).
--
-- label: what a call was for, where its function_name does not say. The
-- deadline of DBOS.recv and DBOS.get_event is recorded as a DBOS.sleep
-- (function_name is what replay checks, and a process of the previous
-- release must still replay it); its label says 'DBOS.recv deadline'.
--
-- Additive only: a process of the previous release leaves both NULL, and
-- reads neither.
ALTER TABLE operation_outputs ADD COLUMN attempts integer, ADD COLUMN label text;
ALTER TABLE branch_outputs ADD COLUMN attempts integer, ADD COLUMN label text;
