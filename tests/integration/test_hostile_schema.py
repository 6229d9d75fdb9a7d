"""Tables of the application's own that share a name with ours change nothing.

Transactions run on connections whose search path starts with the app's
schemas, so every statement names our tables with the system schema.
"""

from __future__ import annotations

import asyncpg
import pytest

from dbos_async import DBOS, SetWorkflowID


async def system_tables(conn: asyncpg.Connection) -> list[str]:
    """Read from the catalog, so a table a later migration adds is shadowed too."""
    rows = await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'dbos_async'")
    assert len(rows) >= 9
    return [r[0] for r in rows]


@pytest.fixture
async def shadows(conn: asyncpg.Connection) -> asyncpg.Connection:
    """A copy of every system table (and the enqueue sequence) in ``public``, plus a ledger."""
    for table in await system_tables(conn):
        await conn.execute(f"CREATE TABLE public.{table} (LIKE dbos_async.{table} INCLUDING ALL)")
    await conn.execute("CREATE SEQUENCE public.workflow_enqueue_seq")
    await conn.execute("CREATE TABLE public.ledger (workflow_id text, n int)")
    return conn


@DBOS.transaction()
async def charge(n: int) -> int:
    await DBOS.connection.execute("INSERT INTO ledger VALUES ($1, $2)", DBOS.workflow_id, n)
    return n * 10


@DBOS.workflow()
async def pay(n: int) -> int:
    return await charge(n) + await charge(n + 1)


async def test_a_transaction_checkpoints_into_the_system_schema(
    dbos: DBOS, shadows: asyncpg.Connection
) -> None:
    with SetWorkflowID("pay-1"):
        assert await pay(1) == 30
    recorded = await shadows.fetchval(
        "SELECT count(*) FROM dbos_async.operation_outputs WHERE workflow_id = 'pay-1'"
    )
    assert recorded == 2
    for table in await system_tables(shadows):
        assert await shadows.fetchval(f"SELECT count(*) FROM public.{table}") == 0, table


async def test_a_replayed_transaction_commits_once_despite_shadow_tables(
    dbos: DBOS, shadows: asyncpg.Connection
) -> None:
    with SetWorkflowID("pay-2"):
        assert await pay(5) == 110
    await shadows.execute(
        "UPDATE dbos_async.workflow_status SET status = 'PENDING', claimed_by = 'crashed'"
        " WHERE workflow_id = 'pay-2'"
    )
    async with DBOS(database_url=dbos.database_url, app_version="test") as again:
        assert await (await again.retrieve_workflow("pay-2")).get_result(timeout=10) == 110
    rows = await shadows.fetch("SELECT n FROM public.ledger WHERE workflow_id = 'pay-2'")
    assert sorted(r["n"] for r in rows) == [5, 6]
