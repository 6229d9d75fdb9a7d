-- Indexes for list_workflows and list_queued_workflows (the management API).
--
-- Listing the newest N workflows walks an index in created_at order and stops
-- after N rows: unfiltered, workflow_status_created_at_idx (0001) does it;
-- filtered by status, name or queue, the matching index below does, so a rare
-- status or name is found without reading the rest of the table.
-- Every index costs each workflow start and status change one more index
-- write, so only the filters that are often selective get one: executor and
-- app version filters ride on these (or on the PENDING index of 0001).
CREATE INDEX workflow_status_status_created_at_idx ON workflow_status (status, created_at);
CREATE INDEX workflow_status_name_created_at_idx ON workflow_status (name, created_at);
CREATE INDEX workflow_status_queue_created_at_idx
    ON workflow_status (queue_name, created_at) WHERE queue_name IS NOT NULL;
