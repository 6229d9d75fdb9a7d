-- name: check_alive
-- A liveness probe for the listener's otherwise idle connection.
SELECT 1;
