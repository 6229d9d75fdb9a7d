"""Three worker processes on one queue: exact limits, exactly once, through a SIGKILL.

The queue (``queue_app.py``): concurrency 2, worker_concurrency 1, at most 4
starts per 50 ms, priorities. The tasks' own ledger rows give each task's
running interval; ``started_at`` gives each admission on the database clock.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import asyncpg
import pytest
from child import Child

from dbos_async import QueueDeduplicatedError
from dbos_async.queue import enqueue_by_name
from dbos_async.systemdb.pool import create_pool

APP = Path(__file__).with_name("queue_app.py")
TASKS = 320
CONCURRENCY, LIMIT, PERIOD_MS = 2, 4, 50


async def start_worker(url: str, executor: str, **env: str) -> Child:
    return await Child.start(APP, url, executor, env=env)


@pytest.fixture
async def workers(db_url: str) -> AsyncIterator[list[Child]]:
    started: list[Child] = []
    yield started
    for worker in started:
        await worker.kill()


@pytest.fixture
async def ledger(conn: asyncpg.Connection) -> asyncpg.Connection:
    await conn.execute(
        "CREATE TABLE public.qledger (task int, event text, executor text, "
        "at timestamptz DEFAULT clock_timestamp())"
    )
    return conn


async def enqueue_all(db_url: str) -> None:
    """320 tasks, priorities 0-4; every tenth carries a deduplication ID, tried twice."""
    pool = await create_pool(db_url, schema="dbos_async", max_size=2)
    try:
        for i in range(TASKS):
            dedup = f"d{i}" if i % 10 == 0 else None
            options = {"deduplication_id": dedup, "priority": (i * 7) % 5}
            await enqueue_by_name(
                pool, queue_name="ledgered", workflow_name="qa.task", args=(i,), **options
            )
            if dedup is not None:
                with pytest.raises(QueueDeduplicatedError):
                    await enqueue_by_name(
                        pool, queue_name="ledgered", workflow_name="qa.task", args=(-i,), **options
                    )
    finally:
        await pool.close()


async def until_all_done(conn: asyncpg.Connection, within: float = 40) -> None:
    """Poll the rows the workers write (nothing in this process is told)."""
    query = "SELECT count(*) FROM workflow_status WHERE status = 'SUCCESS'"
    with anyio.fail_after(within):
        while await conn.fetchval(query) < TASKS:  # noqa: ASYNC110 - other processes' rows
            await asyncio.sleep(0.05)


async def check_ledger(conn: asyncpg.Connection) -> None:
    rows = await conn.fetch("SELECT task, event, executor, at FROM public.qledger")
    # Exactly once: one start and one end per task, nothing else.
    assert sorted((r["task"], r["event"]) for r in rows) == sorted(
        (i, e) for i in range(TASKS) for e in ("end", "start")
    )
    # At no instant more than CONCURRENCY tasks ran, nor more than one per worker.
    by_task: dict[int, dict[str, asyncpg.Record]] = {}
    for r in rows:
        by_task.setdefault(r["task"], {})[r["event"]] = r
    events = []
    for marks in by_task.values():
        start, end = marks["start"], marks["end"]
        assert start["executor"] == end["executor"]  # a recovered task stays with its executor
        events += [(start["at"], 1, start["executor"]), (end["at"], -1, end["executor"])]
    events.sort(key=lambda e: (e[0], e[1]))  # at a tie, the end came first
    total, per_worker, peak, worker_peak = 0, dict[str, int](), 0, 0
    for _, delta, executor in events:
        total += delta
        per_worker[executor] = per_worker.get(executor, 0) + delta
        peak, worker_peak = max(peak, total), max(worker_peak, per_worker[executor])
    assert peak == CONCURRENCY and worker_peak == 1, (peak, worker_peak)
    # At most LIMIT admissions in any PERIOD, on the database clock.
    admitted = await conn.fetch(
        "SELECT started_at, priority FROM workflow_status WHERE queue_name = 'ledgered' "
        "ORDER BY started_at"
    )
    starts = [r["started_at"] for r in admitted]
    assert max(sum(1 for t in starts if s <= t < s + PERIOD_MS) for s in starts) == LIMIT
    # Claims are serialized and everything was enqueued first, so no workflow
    # admitted later has a lower priority (admissions in one ms are unordered).
    by_ms: dict[int, list[int]] = {}
    for r in admitted:
        by_ms.setdefault(r["started_at"], []).append(r["priority"])
    highest_so_far = -1
    for ms in sorted(by_ms):
        assert min(by_ms[ms]) >= highest_so_far, (ms, by_ms[ms], highest_so_far)
        highest_so_far = max(highest_so_far, *by_ms[ms])
    assert len(set(await conn.fetch("SELECT executor_id FROM workflow_status"))) == 3


async def test_three_workers_share_exact_limits(
    db_url: str, ledger: asyncpg.Connection, workers: list[Child]
) -> None:
    await enqueue_all(db_url)
    workers += [await start_worker(db_url, f"w{i}") for i in range(3)]
    for worker in workers:
        await worker.wait_for("ready")
    await until_all_done(ledger)
    await check_ledger(ledger)


async def test_limits_and_exactly_once_hold_through_a_sigkill(
    db_url: str, ledger: asyncpg.Connection, workers: list[Child]
) -> None:
    await enqueue_all(db_url)
    victim = await start_worker(db_url, "w0", HANG_AT="30")
    workers += [victim] + [await start_worker(db_url, f"w{i}") for i in (1, 2)]
    hanging = await victim.wait_for("hanging")
    await victim.kill()
    task = int(hanging.split()[1])
    # Its task stays PENDING and keeps its slot while the worker is dead.
    status = await ledger.fetchval(
        "SELECT status FROM workflow_status WHERE executor_id = 'w0' AND status <> 'SUCCESS'"
    )
    assert status == "PENDING"
    relaunched = await start_worker(db_url, "w0")
    workers.append(relaunched)
    await until_all_done(ledger)
    await check_ledger(ledger)
    ends = await ledger.fetch("SELECT executor FROM public.qledger WHERE task = $1", task)
    assert [r[0] for r in ends] == ["w0", "w0"]
