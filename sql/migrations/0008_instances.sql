-- Runtime instances: one row per running runtime (a process's DBOS object),
-- so that processes sharing an executor ID (uvicorn workers, several scripts,
-- containers with one hostname, all under the default "local") never
-- recover each other's live workflows (fleet.py).
--
-- An instance is alive while it holds the session-level advisory lock
-- lock_key on its listener connection AND heartbeats within the lease.
-- A process that exits, crashes or is killed closes its connections, and
-- the server releases the lock at once; locked_at changes each time the
-- instance takes the lock again (after a reconnect), so "free now and free
-- a settle period later, same locked_at" proves it gone.
--
-- host_key names the kernel and pid namespace the process runs in (boot ID
-- and namespace inode, on Linux): a successor with the same host_key that
-- finds no process with that pid knows at once that the instance is gone,
-- so a restarted process recovers its predecessor's work without waiting.
-- (The hostname alone is no proof: containers may share one.)
--
-- Additive only: the previous release neither reads nor writes it. Rows of an
-- instance gone for a day are deleted by the live ones' heartbeats once no
-- PENDING workflow names it, so a workflow whose claimant has no row was
-- claimed by a release before this table, and the old rules apply to it.
CREATE TABLE instances (
    instance_id   text PRIMARY KEY,
    executor_id   text NOT NULL,
    app_name      text NOT NULL,
    app_version   text NOT NULL,
    hostname      text NOT NULL,
    host_key      text,
    pid           integer NOT NULL,
    lock_key      bigint NOT NULL,
    locked_at     bigint,
    started_at    bigint NOT NULL,
    heartbeat_at  bigint NOT NULL,
    -- How often it heartbeats (ms): it counts as gone by its heartbeat only
    -- after missing three, whatever the lease of the one looking.
    heartbeat_ms  bigint NOT NULL
);

-- The advisory locks held now in this database, as the bigint keys they were
-- taken with: "does instance i hold its lock" is lock_key IN (this view).
CREATE VIEW held_advisory_locks AS
SELECT (l.classid::int8 << 32) | l.objid::int8 AS lock_key, l.pid
FROM pg_catalog.pg_locks AS l
WHERE l.locktype = 'advisory' AND l.objsubid = 1 AND l.granted
  AND l.database = (SELECT oid FROM pg_catalog.pg_database WHERE datname = current_database());
