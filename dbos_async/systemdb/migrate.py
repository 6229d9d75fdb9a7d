"""Forward-only schema migrations from ``sql/migrations/NNNN_name.sql``.

Safe when many processes start at once on an empty database: one advisory
lock serializes the runners, and each file runs in its own transaction.
"""

from __future__ import annotations

import functools
import logging
import re
from dataclasses import dataclass

from dbos_async.systemdb.pool import Connection
from dbos_async.systemdb.queries import sql_root, statements

logger = logging.getLogger(__name__)

_FILE = re.compile(r"(\d{4})_([a-z0-9_]+)\.sql")


@dataclass(frozen=True, slots=True)
class Migration:
    """One migration file."""

    version: int
    name: str
    sql: str


MIGRATION_TIMEOUT_SECONDS = 3600.0
"""Longest a migration (or the wait for another process's) may take."""


@functools.cache
def migrations() -> tuple[Migration, ...]:
    """All migration files, in version order.

    Raises:
        ValueError: a file name breaks the NNNN_short_name.sql convention, or a version repeats.
    """
    found: list[Migration] = []
    for path in (sql_root() / "migrations").iterdir():
        match = _FILE.fullmatch(path.name)
        if match is None:
            raise ValueError(f"migration file {path.name!r} is not named NNNN_short_name.sql")
        found.append(Migration(int(match[1]), path.name, path.read_text(encoding="utf-8")))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise ValueError(f"two migration files share a version: {versions}")
    return tuple(found)


migrations()  # read at import: migrate() runs on the event loop


async def migrate(conn: Connection, schema: str) -> list[int]:
    """Bring ``schema`` up to date; returns the versions applied now.

    ``conn`` must have ``search_path`` set to ``schema`` (as pool connections do).
    """
    pending = migrations()
    sql = statements(schema)
    applied = {r[0] for r in await _applied(conn, schema)}
    if all(m.version in applied for m in pending):
        return []  # the common case: no lock needed
    # Waiting for another process's migration, or building an index on a big
    # table, may take far longer than any other system statement.
    await conn.execute(sql["lock_migrations"], schema, timeout=MIGRATION_TIMEOUT_SECONDS)
    try:
        statement = await conn.fetchval(sql["create_schema_statement"], schema)
        await conn.execute(statement)
        await conn.execute(sql["create_migrations_table"])
        applied = {r[0] for r in await _applied(conn, schema)}
        done: list[int] = []
        for migration in pending:
            if migration.version in applied:
                continue
            async with conn.transaction():
                await conn.execute(migration.sql, timeout=MIGRATION_TIMEOUT_SECONDS)
                await conn.execute(sql["insert_migration"], migration.version, migration.name)
            logger.info(
                "applied migration %s",
                migration.name,
                extra={"action": "migrate", "schema": schema},
            )
            done.append(migration.version)
        return done
    finally:
        await conn.execute(sql["unlock_migrations"], schema)


async def newer_migrations(conn: Connection, schema: str) -> list[int]:
    """Versions applied to ``schema`` that this release has no file for (a newer one applied them).

    One round trip (two on a schema without the migrations table).
    """
    known = {m.version for m in migrations()}
    return sorted(r[0] for r in await _applied(conn, schema) if r[0] not in known)


async def missing_migrations(conn: Connection, schema: str) -> list[int]:
    """Versions of this release not yet applied to ``schema`` (an older release migrated it).

    One round trip (two on a schema without the migrations table).
    """
    applied = {r[0] for r in await _applied(conn, schema)}
    return [m.version for m in migrations() if m.version not in applied]


async def _applied(conn: Connection, schema: str) -> list[tuple[int]]:
    sql = statements(schema)
    if not await conn.fetchval(sql["table_exists"], schema, "schema_migrations"):
        return []
    return [(r[0],) for r in await conn.fetch(sql["select_applied_migrations"])]
