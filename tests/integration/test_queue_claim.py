"""The claim itself: a deterministic race between two claimers, and its query plan."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from dbos_async.queue import enqueue_by_name
from dbos_async.systemdb import queues as queues_table
from dbos_async.systemdb.pool import connect, create_pool
from dbos_async.systemdb.queries import q

SCHEMA = {"search_path": "dbos_async"}
NAMES = ["race.task"]


@pytest.fixture
async def claimers(db_url: str) -> AsyncIterator[tuple[asyncpg.Connection, asyncpg.Connection]]:
    a = await connect(db_url, schema="dbos_async", **SCHEMA)
    b = await connect(db_url, schema="dbos_async", **SCHEMA)
    yield a, b
    await a.close()
    await b.close()


async def enqueue(db_url: str, queue_name: str, count: int) -> None:
    pool = await create_pool(db_url, schema="dbos_async", max_size=2)
    try:
        for i in range(count):
            await enqueue_by_name(pool, queue_name=queue_name, workflow_name="race.task", args=(i,))
    finally:
        await pool.close()


async def claim(
    conn: asyncpg.Connection, executor: str, limits: queues_table.Limits
) -> queues_table.Claim:
    await queues_table.lock_queue(conn, "race", None)
    return await queues_table.claim_queued_workflows(
        conn, "race", None, executor, "v", limits, NAMES, f"{executor}-instance", 0
    )


async def blocked_by(observer: asyncpg.Connection, pid: int, blocker: int) -> None:
    """Return once backend ``pid`` waits for a lock held by ``blocker``."""
    while blocker not in await observer.fetchval("SELECT pg_blocking_pids($1)", pid):  # noqa: ASYNC110 - Postgres announces lock waits to no one
        await asyncio.sleep(0.001)


@pytest.mark.parametrize(
    "limits",
    [
        queues_table.Limits(want=10, concurrency=2),
        queues_table.Limits(want=10, limit=2, period_ms=60_000),
        queues_table.Limits(want=10, worker_concurrency=2),
    ],
    ids=["concurrency", "limiter", "worker_concurrency"],
)
async def test_a_claim_racing_an_open_claim_waits_and_admits_nothing_more(
    db_url: str,
    conn: asyncpg.Connection,
    claimers: tuple[asyncpg.Connection, asyncpg.Connection],
    limits: queues_table.Limits,
) -> None:
    await enqueue(db_url, "race", 6)
    a, b = claimers
    executor_b = "a" if limits.worker_concurrency else "b"  # one executor for its own limit
    open_claim = a.transaction()
    await open_claim.start()
    first = await claim(a, "a", limits)
    assert len(first.rows) == 2  # the limit, held uncommitted

    async def second_claim() -> queues_table.Claim:
        async with b.transaction():
            return await claim(b, executor_b, limits)

    racing = asyncio.create_task(second_claim())
    waiting = asyncio.create_task(blocked_by(conn, b.get_server_pid(), a.get_server_pid()))
    try:
        done, _ = await asyncio.wait({racing, waiting}, timeout=10, return_when="FIRST_COMPLETED")
    finally:
        waiting.cancel()
    # Without the queue lock, B would count nothing (A is uncommitted), skip A's
    # locked rows and claim two more right away.
    assert waiting in done and racing not in done, "the second claim did not wait for the first"
    await open_claim.commit()
    second = await racing
    assert second.rows == []
    assert await conn.fetchval("SELECT count(*) FROM workflow_status WHERE status = 'PENDING'") == 2
    if limits.limit:
        assert second.retry_in_ms is not None and 59_000 < second.retry_in_ms <= 60_000


async def test_a_rolled_back_claim_leaves_its_rows_to_the_next(
    db_url: str, claimers: tuple[asyncpg.Connection, asyncpg.Connection]
) -> None:
    await enqueue(db_url, "race", 3)
    a, b = claimers
    limits = queues_table.Limits(want=10, concurrency=2)
    tx = a.transaction()
    await tx.start()
    assert len((await claim(a, "a", limits)).rows) == 2
    await tx.rollback()
    async with b.transaction():
        assert len((await claim(b, "b", limits)).rows) == 2


def _nodes(plan: dict[str, Any]) -> list[dict[str, Any]]:
    found = [plan]
    for child in plan.get("Plans", []):
        found += _nodes(child)
    return found


FILL = """
INSERT INTO workflow_status (workflow_id, status, name, created_at, updated_at, queue_name,
                             priority, enqueue_seq, started_at, executor_id, app_version)
SELECT 'w' || i,
       CASE WHEN i % 10 = 0 THEN 'ENQUEUED' WHEN i % 10 = 1 THEN 'PENDING' ELSE 'SUCCESS' END,
       'race.task', i, i, 'queue-' || (i % 7), i % 3, i,
       CASE WHEN i % 10 = 0 THEN NULL ELSE i END, 'e' || (i % 3), 'v'
FROM generate_series(1, 100000) AS i
"""


@pytest.mark.parametrize("plan_mode", ["force_custom_plan", "force_generic_plan"])
async def test_the_claim_uses_indexes_on_a_large_table(
    conn: asyncpg.Connection, plan_mode: str
) -> None:
    await conn.execute(FILL)
    await conn.execute("ANALYZE workflow_status")
    await conn.execute(f"SET plan_cache_mode = {plan_mode}")
    # A prepared statement, as asyncpg runs it: after five runs Postgres may
    # switch to the generic plan, so both plans must use the indexes.
    await conn.execute("PREPARE claim AS " + q(conn, "claim_queued_workflows"))
    text = await conn.fetchval(
        "EXPLAIN (FORMAT JSON) EXECUTE claim"
        "('queue-3', NULL, 'e1', 'v', 100, 5, 2, 50, 1000, true, '{race.task}', 'i1', 0, NULL)"
    )
    nodes = _nodes(json.loads(text)[0]["Plan"])
    scans = [n for n in nodes if n.get("Relation Name") == "workflow_status"]
    assert scans and all(n["Node Type"] != "Seq Scan" for n in scans), text
    used = {n.get("Index Name") for n in nodes}
    expected = {
        "workflow_status_enqueued_idx",
        "workflow_status_queue_pending_idx",
        "workflow_status_queue_started_idx",
    }
    assert expected <= used, used
