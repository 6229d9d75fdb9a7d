"""App tables named like the system tables, in ``public``, through a SIGKILL and a recovery.

Transactions run on connections whose search path puts ``public`` first, so a
statement that named a system table without its schema would land in the
app's copy. A process is killed mid-flight and started again: every
transaction must still commit exactly once, every checkpoint in the system
schema, and no shadow table may receive a row.
"""

from __future__ import annotations

import asyncpg
import pytest
from ledger import Observer, problems, until
from procs import apps, launch

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(120)]


async def system_tables(conn: asyncpg.Connection | Observer) -> list[str]:
    """Read from the catalog, so a table a later migration adds is shadowed too."""
    rows = await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'dbos_async'")
    assert len(rows) >= 9
    return [r[0] for r in rows]


COUNT = 20


@pytest.fixture
async def shadows(app_db_url: str) -> None:
    conn = await asyncpg.connect(app_db_url)
    try:
        for table in await system_tables(conn):
            await conn.execute(
                f"CREATE TABLE public.{table} (LIKE dbos_async.{table} INCLUDING ALL)"
            )
        await conn.execute("CREATE SEQUENCE public.workflow_enqueue_seq")
    finally:
        await conn.close()


async def test_transactions_commit_once_through_a_crash_despite_shadow_tables(
    app_db_url: str, ledger: Observer, shadows: None
) -> None:
    async with apps() as running:
        first = await launch(running, "shadow_app.py", app_db_url, f"start:{COUNT}")
        await first.wait_for("started")

        async def mid_flight() -> bool:
            rows = await ledger.fetchval("SELECT count(*) FROM public.ledger")
            return bool(rows >= COUNT)  # about a quarter of the 4 * COUNT attempts

        await until(mid_flight, "a quarter of the work done")
        await first.kill()
        killed_at = await ledger.fetchval("SELECT count(*) FROM public.ledger")
        second = await launch(running, "shadow_app.py", app_db_url, f"finish:{COUNT}")
        await second.wait_for("done", within=60)
    assert killed_at < 4 * COUNT, "the kill came after everything had run"
    assert await problems(ledger) == []
    outputs = await ledger.fetch(
        "SELECT workflow_id, output FROM dbos_async.workflow_status ORDER BY workflow_id"
    )
    assert {r[0]: r[1] for r in outputs} == {f"sh-{i}": str(i + 6) for i in range(COUNT)}
    for table in await system_tables(ledger):
        assert await ledger.fetchval(f"SELECT count(*) FROM public.{table}") == 0, table
    print(f"killed with {killed_at} of {4 * COUNT} ledger rows written")
