"""Test fixtures: a real Postgres always, and a fresh database per test cloned from a template.

The server is, in order: ``$DBOS_TEST_DATABASE_URL``; a throwaway cluster
started from the system's (or the embedded wheel's) Postgres binaries on a free
port; a testcontainers Postgres when a Docker engine answers.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import shutil
from collections.abc import AsyncIterator, Iterator

import asyncpg
import pytest

from dbos_async import DBOS
from dbos_async.systemdb.migrate import migrate
from dbos_async.systemdb.pool import connect

SCHEMA = "dbos_async"
_counter = itertools.count()


def _with_database(url: str, database: str) -> str:
    base, _, query = url.partition("?")
    root = base.rsplit("/", 1)[0]
    return f"{root}/{database}" + (f"?{query}" if query else "")


@pytest.fixture(scope="session")
def pg_server_url() -> Iterator[str]:
    url = os.environ.get("DBOS_TEST_DATABASE_URL")
    if url:
        yield url
        return
    try:
        from dbos_async.embedded import start_throwaway_cluster

        url, cluster = start_throwaway_cluster()
    except (RuntimeError, ImportError, FileNotFoundError) as exc:
        cluster = None
        reason = exc
    if cluster is not None:
        try:
            yield url
        finally:
            cluster.stop()
        return
    if shutil.which("docker"):
        try:
            from testcontainers.postgres import PostgresContainer

            with PostgresContainer("postgres:16", driver=None) as container:
                yield container.get_connection_url()
            return
        except Exception as exc:  # no engine answering
            reason = exc
    pytest.exit(f"no Postgres for the tests: set DBOS_TEST_DATABASE_URL ({reason})", returncode=2)


@pytest.fixture(scope="session")
def template_db(pg_server_url: str) -> Iterator[str]:
    """A database migrated once; each test clones it."""
    name = f"dbos_tpl_{os.getpid()}"

    async def setup() -> None:
        admin = await asyncpg.connect(pg_server_url)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            await admin.execute(f'CREATE DATABASE "{name}"')
        finally:
            await admin.close()
        conn = await asyncpg.connect(
            _with_database(pg_server_url, name), server_settings={"search_path": SCHEMA}
        )
        try:
            await migrate(conn, SCHEMA)
        finally:
            await conn.close()

    asyncio.run(setup())
    yield name

    async def teardown() -> None:
        admin = await asyncpg.connect(pg_server_url)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()

    asyncio.run(teardown())


@pytest.fixture
async def db_url(pg_server_url: str, template_db: str) -> AsyncIterator[str]:
    """A fresh, migrated database for one test."""
    name = f"t_{os.getpid()}_{next(_counter)}"
    admin = await asyncpg.connect(pg_server_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template_db}"')
    finally:
        await admin.close()
    yield _with_database(pg_server_url, name)
    admin = await asyncpg.connect(pg_server_url)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest.fixture
async def conn(db_url: str) -> AsyncIterator[asyncpg.Connection]:
    """A plain connection to the test database, search path on the system schema."""
    c = await connect(db_url, schema=SCHEMA, search_path=f"{SCHEMA}, public")
    yield c
    await c.close()


@pytest.fixture
async def dbos(db_url: str) -> AsyncIterator[DBOS]:
    """A launched runtime on the test database."""
    async with DBOS(database_url=db_url, app_version="test") as runtime:
        yield runtime


@pytest.fixture(autouse=True)
def blockbuster() -> Iterator[None]:
    """Fail any test whose code blocks the event loop (file I/O, time.sleep, ...)."""
    from blockbuster import blockbuster_ctx

    with blockbuster_ctx(["dbos_async", "tests"]) as bb:
        # asyncpg looks for ~/.pgpass and ~/.postgresql certificates on every
        # connect: its own choice, and tiny.
        for function in bb.functions.values():
            function.can_block_in("asyncpg/connect_utils.py", "_parse_connect_dsn_and_args")
        yield
