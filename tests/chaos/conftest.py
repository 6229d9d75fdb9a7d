"""Fixtures of the fault suite: restartable clusters, a misbehaving proxy, the ledger.

A scenario that restarts or freezes its server gets a cluster of its own
(``cluster``, one per module) by overriding ``app_db_url`` with
``cluster_db_url``; the others use the suite's server (``db_url``).
"""

from __future__ import annotations

import itertools
import urllib.parse
from collections.abc import AsyncIterator, Iterator

import asyncpg
import pytest
from cluster import Cluster, leaked_servers
from ledger import LEDGER_DDL, Observer, book
from proxy import PostgresProxy, running_proxy

from dbos_async.systemdb.migrate import migrate

SCHEMA = "dbos_async"
_databases = itertools.count()


@pytest.fixture(scope="session", autouse=True)
def no_leaked_servers() -> Iterator[None]:
    yield
    assert leaked_servers() == [], "a cluster of the fault suite outlived its tests"


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    started = Cluster()
    try:
        yield started
    finally:
        started.stop()


@pytest.fixture
async def cluster_db_url(cluster: Cluster) -> AsyncIterator[str]:
    """A fresh, migrated database on the module's own cluster."""
    name = f"chaos_{next(_databases)}"
    admin = await asyncpg.connect(cluster.url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    url = cluster.database_url(name)
    conn = await asyncpg.connect(url, server_settings={"search_path": SCHEMA})
    try:
        await migrate(conn, SCHEMA)
    finally:
        await conn.close()
    yield url
    admin = await asyncpg.connect(cluster.url)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest.fixture
def app_db_url(db_url: str) -> str:
    """The database the scenario's runtimes use; modules with a cluster override it."""
    return db_url


@pytest.fixture
async def ledger(app_db_url: str) -> AsyncIterator[Observer]:
    """``public.ledger`` in the app database, open for the step bodies; yields an observer."""
    conn = await asyncpg.connect(app_db_url)
    try:
        await conn.execute(LEDGER_DDL)
    finally:
        await conn.close()
    book.open(app_db_url)
    observer = Observer(app_db_url)
    yield observer
    await observer.close()
    await book.close()


@pytest.fixture
async def proxy(app_db_url: str) -> AsyncIterator[PostgresProxy]:
    """A proxy in front of the app database's server."""
    parts = urllib.parse.urlsplit(app_db_url)
    async with running_proxy(parts.hostname or "127.0.0.1", parts.port or 5432) as started:
        yield started
