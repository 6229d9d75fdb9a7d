"""The fault proxy itself, against the real server: it forwards, cuts, holds and drops."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import asyncpg
import pytest
from proxy import PostgresProxy

pytestmark = pytest.mark.chaos


@pytest.fixture
async def table(app_db_url: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(app_db_url)
    await conn.execute("CREATE TABLE public.notes (n int)")
    yield conn
    await conn.close()


async def test_it_forwards_simple_and_extended_queries(
    proxy: PostgresProxy, app_db_url: str
) -> None:
    conn = await asyncpg.connect(proxy.url(app_db_url))
    try:
        assert await conn.fetchval("SELECT 1") == 1
        assert await conn.fetchval("SELECT $1::int + 1", 41) == 42
        await conn.execute("SELECT 1; SELECT 2")  # simple protocol, two statements
    finally:
        await conn.close()
    assert proxy.connections == 1


async def test_cut_closes_every_connection(proxy: PostgresProxy, app_db_url: str) -> None:
    conns = [await asyncpg.connect(proxy.url(app_db_url)) for _ in range(3)]
    assert proxy.cut() == 3
    for conn in conns:
        with pytest.raises((asyncpg.ConnectionDoesNotExistError, asyncpg.InterfaceError)):
            await conn.fetchval("SELECT 1")
        conn.terminate()


async def test_a_blackhole_holds_replies_until_restored(
    proxy: PostgresProxy, app_db_url: str
) -> None:
    conn = await asyncpg.connect(proxy.url(app_db_url))
    try:
        proxy.blackhole()
        query = asyncio.ensure_future(conn.fetchval("SELECT 7"))
        done, _ = await asyncio.wait([query], timeout=0.5)
        assert not done, "a reply went through the blackhole"
        proxy.restore()
        assert await query == 7
    finally:
        await conn.close()


async def test_a_dropped_commit_reply_hides_a_commit_that_happened(
    proxy: PostgresProxy, app_db_url: str, table: asyncpg.Connection
) -> None:
    dropped = proxy.drop_next_commit_reply(containing="public.notes")
    conn = await asyncpg.connect(proxy.url(app_db_url))
    with pytest.raises((asyncpg.ConnectionDoesNotExistError, asyncpg.InterfaceError, OSError)):
        async with conn.transaction():
            await conn.execute("INSERT INTO public.notes VALUES ($1)", 1)
    conn.terminate()
    reply = await dropped
    assert reply.tag == "COMMIT"
    assert any("public.notes" in sql for sql in reply.transaction)
    assert await table.fetchval("SELECT count(*) FROM public.notes") == 1  # it did commit


async def test_a_dropped_reply_of_an_autocommit_statement(
    proxy: PostgresProxy, app_db_url: str, table: asyncpg.Connection
) -> None:
    dropped = proxy.drop_next_reply(lambda r: r.tag == "INSERT 0 1" and "notes" in r.sql)
    conn = await asyncpg.connect(proxy.url(app_db_url))
    assert await conn.fetchval("SELECT 1") == 1  # other replies go through
    with pytest.raises((asyncpg.ConnectionDoesNotExistError, asyncpg.InterfaceError, OSError)):
        await conn.execute("INSERT INTO public.notes VALUES ($1)", 2)
    conn.terminate()
    assert (await dropped).sql.startswith("INSERT INTO public.notes")
    assert await table.fetchval("SELECT count(*) FROM public.notes") == 1
