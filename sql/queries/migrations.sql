-- name: lock_migrations
-- Serialize migration runs on this database and schema (session advisory lock).
SELECT pg_advisory_lock(hashtext('dbos_async.migrate:' || $1));

-- name: unlock_migrations
-- Release the lock taken by lock_migrations.
SELECT pg_advisory_unlock(hashtext('dbos_async.migrate:' || $1));

-- name: create_schema_statement
-- The CREATE SCHEMA statement for schema $1, its name quoted by the server.
SELECT format('CREATE SCHEMA IF NOT EXISTS %I', $1::text);

-- name: create_migrations_table
-- The table of applied migration versions.
CREATE TABLE IF NOT EXISTS {schema}.schema_migrations (
    version     integer PRIMARY KEY,
    name        text NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now()
);

-- name: select_applied_migrations
-- Versions already applied.
SELECT version FROM {schema}.schema_migrations;

-- name: table_exists
-- Whether table $2 exists in schema $1.
SELECT to_regclass(quote_ident($1) || '.' || quote_ident($2)) IS NOT NULL;

-- name: insert_migration
-- Record migration $1 (file $2) as applied.
INSERT INTO {schema}.schema_migrations (version, name) VALUES ($1, $2);
