"""Chaos: connections are killed again and again while workflows run; every
workflow still finishes, each completed step having run once."""

from __future__ import annotations

import asyncio
import collections

import anyio
import asyncpg

from dbos_async import DBOS, SetWorkflowID

runs: collections.Counter[str] = collections.Counter()


@DBOS.step()
async def counted(workflow: str, n: int) -> int:
    runs[f"{workflow}:{n}"] += 1
    await asyncio.sleep(0.005)
    return n


@DBOS.workflow()
async def three_steps(name: str) -> int:
    total = 0
    for n in range(3):
        total += await counted(name, n)
        await DBOS.sleep(0.01)
    return total


async def test_workflows_finish_while_connections_are_killed(
    db_url: str, conn: asyncpg.Connection
) -> None:
    runs.clear()
    async with DBOS(database_url=db_url, app_version="chaos") as dbos:
        handles = []
        for i in range(100):
            with SetWorkflowID(f"chaos-{i}"):
                handles.append(await dbos.start_workflow(three_steps, f"chaos-{i}"))
        killed = 0
        for _ in range(20):  # about a second of chaos
            killed += await conn.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
            await anyio.sleep(0.05)
        assert killed > 0
        results = [await h.get_result(timeout=60) for h in handles]
    assert results == [3] * 100
    statuses = await conn.fetch("SELECT DISTINCT status FROM workflow_status")
    assert [r[0] for r in statuses] == ["SUCCESS"]
    # A step body may run again only when its checkpoint never committed; at
    # most once more per kill that could have hit it.
    assert all(count >= 1 for count in runs.values()) and len(runs) == 300


@DBOS.step()
async def slow_step(n: int) -> int:
    await asyncio.sleep(0.2)
    return n


@DBOS.workflow()
async def through_an_outage() -> int:
    return sum([await slow_step(n) for n in range(6)])


async def test_a_workflow_outlives_an_outage_longer_than_the_checkpoint_retries(
    db_url: str, pg_server_url: str, conn: asyncpg.Connection
) -> None:
    database = db_url.rsplit("/", 1)[1]
    admin = await asyncpg.connect(pg_server_url)  # ALTER DATABASE runs from another one
    async with DBOS(database_url=db_url, app_version="chaos") as dbos:
        # Step checkpoints give up after 30 ms instead of about 8 s; the outcome's
        # writer keeps its patience, so it would record an ERROR if the step's
        # DatabaseUnavailableError were taken for the workflow's outcome.
        dbos._runtime.step_writer.retry_delays = (0.01, 0.02)
        with SetWorkflowID("outage"):
            handle = await dbos.start_workflow(through_an_outage)
        await anyio.sleep(0.3)  # part of the scenario: the workflow is between steps
        await admin.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS false')
        try:
            await admin.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = $1 AND pid <> $2",
                database,
                conn.get_server_pid(),
            )
            await anyio.sleep(0.6)  # the outage: every connection attempt is refused
        finally:
            await admin.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS true')
            await admin.close()
        assert await handle.get_result(timeout=30) == 15  # not an ERROR: it replayed
    assert await conn.fetchval("SELECT status FROM workflow_status") == "SUCCESS"
