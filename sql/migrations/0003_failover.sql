-- Fleet failover: executor heartbeats, and a fencing token on each workflow.

-- Bumped whenever a runtime claims a PENDING workflow (recovery, adoption,
-- resume). Every checkpoint statement carries the token its writer claimed
-- and writes nothing when the row holds another: a stale owner is fenced off.
ALTER TABLE workflow_status ADD COLUMN fence integer NOT NULL DEFAULT 0;

-- One row per executor ID, refreshed by each live runtime every lease/3.
CREATE TABLE executors (
    executor_id   text PRIMARY KEY,
    app_name      text NOT NULL,
    app_version   text NOT NULL,
    heartbeat_at  bigint NOT NULL
);
