"""Throwaway system databases for ``TestEnvironment``: one per environment, dropped after.

The server is, in order: the URL given, ``$DBOS_TEST_DATABASE_URL``, else a
Postgres cluster this process starts from the embedded wheel (or the
system's binaries) in a temporary directory, once, and stops at exit. On it
each environment gets a database of its own; where the role may not create
databases, a schema of its own in the URL's database instead.
"""

from __future__ import annotations

import atexit
import itertools
import os
import secrets
import threading
from dataclasses import dataclass
from typing import Any

import anyio
import asyncpg

from dbos_async.errors import DBOSError
from dbos_async.validation import check_schema_name

TEST_DATABASE_URL_ENV = "DBOS_TEST_DATABASE_URL"

_counter = itertools.count()
_cluster: Any = None  # the embedded cluster of this process, started on first use
_cluster_lock = threading.Lock()  # environments in several threads' loops share it


@dataclass(frozen=True)
class Throwaway:
    """Where one environment's system tables live, and how to remove them."""

    server_url: str
    database_url: str  # the runtime's URL
    schema: str  # the system schema
    database: str | None  # the database created for it (None: a schema in an existing one)

    async def drop(self) -> None:
        """Remove the database (or the schema) and everything in it."""
        admin = await asyncpg.connect(self.server_url)
        try:
            if self.database is not None:
                await admin.execute(f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)')
            else:
                await admin.execute(f'DROP SCHEMA IF EXISTS "{self.schema}" CASCADE')
        finally:
            await admin.close()


def with_database(url: str, database: str) -> str:
    """``url`` pointing at another database of the same server."""
    base, _, query = url.partition("?")
    root = base.rsplit("/", 1)[0]
    return f"{root}/{database}" + (f"?{query}" if query else "")


async def server_url(given: str | None) -> str:
    """The server to create throwaway databases on (see the module docstring)."""
    url = given or os.environ.get(TEST_DATABASE_URL_ENV)
    if url:
        return url
    return await anyio.to_thread.run_sync(_embedded_cluster_url)


def _embedded_cluster_url() -> str:
    # In a worker thread: initdb and the server's start take seconds.
    global _cluster
    with _cluster_lock:
        if _cluster is None:
            from dbos_async.embedded import start_throwaway_cluster

            _, _cluster = start_throwaway_cluster()
            atexit.register(_cluster.stop)
        return str(_cluster.url)


async def create(given: str | None, schema: str) -> Throwaway:
    """A fresh, empty place for one environment's system tables.

    Raises:
        DBOSError: the role may create neither a database nor a schema.
    """
    check_schema_name(schema)
    url = await server_url(given)
    name = f"dbos_test_{os.getpid()}_{next(_counter)}_{secrets.token_hex(3)}"
    admin = await asyncpg.connect(url)
    try:
        try:
            await admin.execute(f'CREATE DATABASE "{name}"')
        except asyncpg.InsufficientPrivilegeError:
            # No CREATEDB: a schema of its own in the URL's database instead.
            if not await admin.fetchval(
                "SELECT has_database_privilege(current_database(), 'CREATE')"
            ):
                raise DBOSError(
                    "TestEnvironment cannot make a throwaway place for its tables: the role"
                    " may neither create databases nor create schemas in"
                    f" {await admin.fetchval('SELECT current_database()')!r}"
                    " (grant it CREATEDB, or CREATE on that database)"
                ) from None
            return Throwaway(url, url, name, None)
    finally:
        await admin.close()
    return Throwaway(url, with_database(url, name), schema, name)
