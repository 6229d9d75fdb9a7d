"""Group commit: rows that share a statement do not share its failure.

Each test holds the writer's one connection with a first row (the leader) so
that the rows submitted meanwhile queue up and go out as one multi-row
statement; the flush counts the rows of every statement it sends.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import replace
from typing import Any

import anyio
import asyncpg
import pytest

from dbos_async import DBOS, WorkflowHandle
from dbos_async.errors import DatabaseUnavailableError
from dbos_async.systemdb import workflows as wf_table
from dbos_async.systemdb.group_commit import GroupCommit
from dbos_async.systemdb.pool import Connection, Pool, create_pool

SCHEMA = "dbos_async"  # the schema of every test database
Outcome = wf_table.Existing | None

# 1,024 distinct 4-byte characters: 4,096 bytes that pglz cannot compress, so
# the primary key's index row exceeds the btree limit (2,704 bytes).
TOO_LONG_ID = "".join(chr(c) for c in random.Random(20).sample(range(0x10000, 0x10FFFF), 1024))


_ROW = wf_table.NewWorkflow("", "wf", "[]", "app", "v", "local", 1)


def new_workflow(workflow_id: str, **fields: Any) -> wf_table.NewWorkflow:
    return replace(_ROW, workflow_id=workflow_id, **fields)


# Rows that validation refuses today, so only a bug or a gap could let them
# through: the server refuses the first, the driver the other two.
POISONS = {
    "index row too large": (new_workflow(TOO_LONG_ID), asyncpg.ProgramLimitExceededError),
    "bigint out of range": (new_workflow("big", timeout_ms=2**63), asyncpg.DataError),
    "lone surrogate": (new_workflow("sur", name="\ud800"), asyncpg.DataError),
}


class GatedFlush:
    """``insert_workflows``, counting rows per statement; the first call waits for ``gate``."""

    def __init__(self) -> None:
        self.sizes: list[int] = []
        self.entered = asyncio.Event()
        self.gate = asyncio.Event()
        # Runs before each statement, with the connection and the statement's number.
        self.before: Callable[[Connection, int], Awaitable[None]] | None = None

    async def __call__(
        self, conn: Connection, rows: Sequence[wf_table.NewWorkflow]
    ) -> Sequence[Outcome | BaseException]:
        self.sizes.append(len(rows))
        if len(self.sizes) == 1:
            self.entered.set()
            await self.gate.wait()
        if self.before is not None:
            await self.before(conn, len(self.sizes))
        return await wf_table.insert_workflows(conn, rows)


@pytest.fixture
async def pool(db_url: str) -> AsyncIterator[Pool]:
    p = await create_pool(db_url, schema=SCHEMA, max_size=3)
    yield p
    await p.close()


@pytest.fixture
def flush() -> GatedFlush:
    return GatedFlush()


@pytest.fixture
async def writer(
    pool: Pool, flush: GatedFlush
) -> AsyncIterator[GroupCommit[wf_table.NewWorkflow, Outcome]]:
    gc: GroupCommit[wf_table.NewWorkflow, Outcome] = GroupCommit(
        "test_insert_workflows", pool, flush, writers=1, max_batch=100
    )
    started = asyncio.Event()

    async def serve() -> None:  # in a task of its own: the fixture's teardown runs in another
        async with anyio.create_task_group() as tg:
            await tg.start(gc.run)
            started.set()

    task = asyncio.create_task(serve())
    await started.wait()
    yield gc
    gc.close()
    await task


async def one_batch(
    writer: GroupCommit[wf_table.NewWorkflow, Outcome],
    flush: GatedFlush,
    rows: list[wf_table.NewWorkflow],
) -> list[Outcome | BaseException]:
    """Submit ``rows`` while a leader holds the connection, so they share one statement."""
    leader = asyncio.create_task(writer.submit(new_workflow("leader")))
    await flush.entered.wait()
    tasks = [asyncio.create_task(writer.submit(row)) for row in rows]
    await asyncio.sleep(0)  # each task queues its row, then awaits it
    flush.gate.set()
    assert await leader is None
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert flush.sizes[:2] == [1, len(rows)], "the rows did not share one statement"
    return results


async def stored_ids(conn: asyncpg.Connection) -> set[str]:
    return {r[0] for r in await conn.fetch("SELECT workflow_id FROM workflow_status")}


@pytest.mark.parametrize("poison", POISONS)
async def test_a_bad_row_fails_alone_and_its_batch_mates_commit(
    writer: GroupCommit[wf_table.NewWorkflow, Outcome],
    flush: GatedFlush,
    conn: asyncpg.Connection,
    poison: str,
) -> None:
    bad, error = POISONS[poison]
    rows = [new_workflow("a"), new_workflow("b"), bad, new_workflow("c"), new_workflow("d")]
    results = await one_batch(writer, flush, rows)
    assert isinstance(results[2], error), results[2]
    assert results[:2] + results[3:] == [None] * 4
    assert flush.sizes == [1, 5, 1, 1, 1, 1, 1]  # the batch, then each of its rows alone
    assert await stored_ids(conn) == {"leader", "a", "b", "c", "d"}


async def test_several_bad_rows_each_get_their_own_error(
    writer: GroupCommit[wf_table.NewWorkflow, Outcome],
    flush: GatedFlush,
    conn: asyncpg.Connection,
) -> None:
    bads = [bad for bad, _ in POISONS.values()]
    results = await one_batch(writer, flush, [*bads, new_workflow("ok"), new_workflow("leader")])
    assert [type(r) for r in results[:3]] == [e for _, e in POISONS.values()]
    # The batch's last row takes an ID already taken: its own outcome, as in any batch.
    assert results[3:] == [None, wf_table.Existing("wf", "PENDING")]
    assert await stored_ids(conn) == {"leader", "ok"}


async def test_a_batch_that_succeeds_is_one_statement(
    writer: GroupCommit[wf_table.NewWorkflow, Outcome],
    flush: GatedFlush,
    conn: asyncpg.Connection,
) -> None:
    results = await one_batch(writer, flush, [new_workflow(str(i)) for i in range(5)])
    assert results == [None] * 5
    assert flush.sizes == [1, 5]
    assert await stored_ids(conn) == {"leader", "0", "1", "2", "3", "4"}


async def test_a_lone_bad_row_is_written_once(
    writer: GroupCommit[wf_table.NewWorkflow, Outcome], flush: GatedFlush
) -> None:
    flush.gate.set()
    with pytest.raises(asyncpg.ProgramLimitExceededError):
        await writer.submit(POISONS["index row too large"][0])
    assert flush.sizes == [1]
    assert await writer.submit(new_workflow("after")) is None


async def test_a_database_lost_while_retrying_row_by_row_fails_the_rest_at_once(
    writer: GroupCommit[wf_table.NewWorkflow, Outcome],
    flush: GatedFlush,
    pg_server_url: str,
    db_url: str,
) -> None:
    # Once a row has waited out every retry, the rows after it do not each wait again.
    writer.retry_delays = (0.3, 0.3)
    database = db_url.rsplit("/", 1)[1].partition("?")[0]
    # From another database: Postgres will not shut the one a session is in.
    admin = await asyncpg.connect(pg_server_url)

    async def lose_the_database(c: Connection, statement: int) -> None:
        if statement == 3:  # the first row alone, after the batch failed
            await admin.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS false')
            await admin.fetchval("SELECT pg_terminate_backend($1)", c.get_server_pid())

    flush.before = lose_the_database
    rows = [new_workflow("a"), POISONS["index row too large"][0], *map(new_workflow, "bcdefg")]
    started = time.monotonic()
    try:
        results = await one_batch(writer, flush, rows)
    finally:
        await admin.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS true')
        await admin.close()
    assert all(isinstance(r, DatabaseUnavailableError) for r in results), results
    assert time.monotonic() - started < 2.0  # one row's retries (0.6 s), not eight rows'


@DBOS.workflow()
async def double(x: int) -> int:
    return 2 * x


async def test_concurrent_starts_survive_a_bad_row_in_their_batch(dbos: DBOS) -> None:
    runtime = dbos._runtime
    bad = new_workflow(TOO_LONG_ID, executor_id=runtime.executor_id)
    starts = [DBOS.start_workflow(double, i) for i in range(40)]
    outcomes = await asyncio.gather(
        *starts[:20], runtime.workflow_writer.submit(bad), *starts[20:], return_exceptions=True
    )
    assert isinstance(outcomes[20], asyncpg.ProgramLimitExceededError), outcomes[20]
    handles = [o for i, o in enumerate(outcomes) if i != 20]
    assert all(isinstance(h, WorkflowHandle) for h in handles), handles
    assert [await h.get_result() for h in handles if isinstance(h, WorkflowHandle)] == [
        2 * i for i in range(40)
    ]
