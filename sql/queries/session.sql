-- name: set_async_commit
-- For the completion writer's own connections: commit without waiting for the
-- WAL flush. Safe because a workflow's outcome is derivable from its recorded
-- steps: if a server crash loses it, recovery replays and records it again.
SET synchronous_commit TO off;

-- name: reset_session
-- Undo session settings before a connection goes back to the pool.
RESET ALL;

-- name: check_alive
-- A liveness probe for the listener's otherwise idle connection.
SELECT 1;
