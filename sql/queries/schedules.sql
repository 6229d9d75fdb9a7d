-- name: select_schedule_tick
-- The latest tick (epoch ms) started for schedule $1, or no row.
SELECT last_tick_ms FROM {schema}.schedule_ticks WHERE schedule_name = $1;

-- name: record_schedule_tick
-- Remember that schedule $1 started its tick $2; the latest tick wins, so
-- runtimes recording the same or older ticks never move it backwards.
INSERT INTO {schema}.schedule_ticks AS tick (schedule_name, last_tick_ms, updated_at)
VALUES ($1, $2, $3)
ON CONFLICT (schedule_name) DO UPDATE
SET last_tick_ms = greatest(tick.last_tick_ms, excluded.last_tick_ms),
    updated_at = excluded.updated_at;
