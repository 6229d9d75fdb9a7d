-- The application versions that ever ran against this database (see
-- versions.py). Every runtime registers its version with each heartbeat
-- (upsert_heartbeat); first_seen is when one was first registered (or, for
-- the versions recorded before this table, its first workflow), last_seen
-- its latest heartbeat.
--
-- The latest version is the one with the greatest latest_at among those a
-- live runtime instance runs (live_versions): a version gets it when first
-- registered, and set_latest_version gives it again. A version launched once
-- and gone is never the latest. Enqueues that name no version (the client,
-- enqueue by name) go to the latest one, and only its runtimes fire schedules.
--
-- Additive only: a process of the previous release neither writes nor reads it.
CREATE TABLE app_versions (
    version     text PRIMARY KEY,
    app_name    text,
    first_seen  bigint NOT NULL,
    last_seen   bigint NOT NULL,
    latest_at   bigint NOT NULL
);

-- The versions a live instance runs: one whose heartbeat is within three of
-- its own periods, by the database's clock.
CREATE VIEW live_versions AS
SELECT a.version, a.latest_at
FROM app_versions AS a
WHERE EXISTS (
    SELECT 1 FROM instances AS i
    WHERE i.app_version = a.version
      AND i.heartbeat_at >= (extract(epoch FROM clock_timestamp()) * 1000)::int8
                            - 3 * i.heartbeat_ms);

INSERT INTO app_versions (version, app_name, first_seen, last_seen, latest_at)
SELECT app_version, max(app_name), min(created_at), max(updated_at), min(created_at)
FROM workflow_status
WHERE app_version IS NOT NULL
GROUP BY app_version;
