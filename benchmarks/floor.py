"""The physical floor: what raw asyncpg gets from the same server in the same run.

``python -m benchmarks.floor F --db-url URL [--quick]`` measures, on a fresh
database: one autocommit ``INSERT`` (INSERT + COMMIT in one round trip, with
``synchronous_commit=on``), the same from 10 pooled connections, a multi-row
``INSERT … SELECT FROM unnest(…)``, a NOTIFY→LISTEN wake-up, and the
group-commit floor (many coroutines' awaited writes batched per loop tick).
"""

from __future__ import annotations

import asyncio
import time
import uuid

import asyncpg

from benchmarks.harness import ChildArgs, Result, child_main, median, size, us, version_of

CREATE = """
CREATE TABLE checkpoints (
    workflow_id text NOT NULL,
    step_id integer NOT NULL,
    output text,
    PRIMARY KEY (workflow_id, step_id)
)
"""
INSERT_ONE = "INSERT INTO checkpoints (workflow_id, step_id, output) VALUES ($1, $2, $3)"
INSERT_MANY = """
INSERT INTO checkpoints (workflow_id, step_id, output)
SELECT * FROM unnest($1::text[], $2::integer[], $3::text[])
"""
OUTPUT = '{"ok": true}'  # a typical small step output, as JSON text
UNNEST_BATCH = 1000
GC_WRITERS = 4
GC_MAX_BATCH = 2000


async def single_round_trip(conn: asyncpg.Connection, n: int) -> list[float]:
    """Latency (µs) of n sequential autocommit INSERTs on one connection."""
    wid = uuid.uuid4().hex
    samples = []
    for i in range(n):
        t0 = time.perf_counter()
        await conn.execute(INSERT_ONE, wid, i, OUTPUT)
        samples.append(us(time.perf_counter() - t0))
    return samples


async def pooled_inserts(pool: asyncpg.Pool, n: int, workers: int = 10) -> float:
    """Inserts/s of n autocommit INSERTs from ``workers`` connections, one per task."""

    async def worker(w: int) -> None:
        wid = f"pool-{w}-{uuid.uuid4().hex}"
        async with pool.acquire() as conn:
            for i in range(n // workers):
                await conn.execute(INSERT_ONE, wid, i, OUTPUT)

    t0 = time.perf_counter()
    await asyncio.gather(*(worker(w) for w in range(workers)))
    return n / (time.perf_counter() - t0)


async def unnest_rows(conn: asyncpg.Connection, rows: int) -> float:
    """Rows/s of multi-row INSERTs from unnest, in batches of UNNEST_BATCH."""
    wid = uuid.uuid4().hex
    t0 = time.perf_counter()
    for start in range(0, rows, UNNEST_BATCH):
        ids = list(range(start, min(rows, start + UNNEST_BATCH)))
        await conn.execute(INSERT_MANY, [wid] * len(ids), ids, [OUTPUT] * len(ids))
    return rows / (time.perf_counter() - t0)


async def notify_latency(db_url: str, n: int) -> list[float]:
    """NOTIFY→LISTEN wake-up (µs): from sending pg_notify to the listener's callback."""
    listener = await asyncpg.connect(db_url)
    sender = await asyncpg.connect(db_url)
    loop = asyncio.get_running_loop()
    waiting: list[asyncio.Future[float]] = []

    def on_notify(*_: object) -> None:
        if waiting and not waiting[0].done():
            waiting[0].set_result(time.perf_counter())

    try:
        await listener.add_listener("bench", on_notify)
        samples = []
        for i in range(n):
            waiting[:] = [loop.create_future()]
            t0 = time.perf_counter()
            await sender.execute("SELECT pg_notify('bench', $1)", str(i))
            samples.append(us(await asyncio.wait_for(waiting[0], 10) - t0))
        return samples
    finally:
        await listener.close()
        await sender.close()


class GroupCommitter:
    """Writer tasks that drain every write submitted so far into one multi-row INSERT."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool
        self._pending: asyncio.Queue[tuple[tuple[str, int], asyncio.Future[None]]] = asyncio.Queue()
        self.batches = 0

    async def write(self, workflow_id: str, step_id: int) -> None:
        """Submit one checkpoint row and wait until its batch has committed."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.put_nowait(((workflow_id, step_id), done))
        await done

    async def writer(self) -> None:
        """Take one row (waiting), then everything already queued, and commit them together."""
        async with self._pool.acquire() as conn:
            while True:
                batch = [await self._pending.get()]
                while len(batch) < GC_MAX_BATCH and not self._pending.empty():
                    batch.append(self._pending.get_nowait())
                ids = [row for row, _ in batch]
                try:
                    await conn.execute(
                        INSERT_MANY,
                        [w for w, _ in ids],
                        [s for _, s in ids],
                        [OUTPUT] * len(ids),
                    )
                except Exception as exc:
                    for _, fut in batch:
                        fut.set_exception(exc)
                    continue
                self.batches += 1
                for _, fut in batch:
                    fut.set_result(None)


async def group_commit(pool: asyncpg.Pool, coroutines: int, rows_each: int) -> tuple[float, int]:
    """Checkpoint rows/s when ``coroutines`` tasks each await ``rows_each`` writes in turn."""
    committer = GroupCommitter(pool)
    writers = [asyncio.create_task(committer.writer()) for _ in range(GC_WRITERS)]

    async def workflow(i: int) -> None:
        wid = f"gc-{i}-{uuid.uuid4().hex}"
        for step in range(rows_each):
            await committer.write(wid, step)

    try:
        t0 = time.perf_counter()
        await asyncio.gather(*(workflow(i) for i in range(coroutines)))
        elapsed = time.perf_counter() - t0
    finally:
        for task in writers:
            task.cancel()
        await asyncio.gather(*writers, return_exceptions=True)
    return coroutines * rows_each / elapsed, committer.batches


async def floor(args: ChildArgs) -> Result:
    """All floor figures, on one fresh database."""
    q = args.quick
    conn = await asyncpg.connect(args.db_url)
    try:
        await conn.execute(CREATE)
        await conn.execute("SET synchronous_commit = on")
        await single_round_trip(conn, 20)  # warm-up: connection, plan cache
        single = await single_round_trip(conn, size("F", "single", q))
        unnest = await unnest_rows(conn, size("F", "unnest_rows", q))
    finally:
        await conn.close()
    pool = await asyncpg.create_pool(args.db_url, min_size=10, max_size=10)
    try:
        pooled = await pooled_inserts(pool, size("F", "pool_n", q))
        notify = await notify_latency(args.db_url, size("F", "notify", q))
        gc_rate, gc_batches = await group_commit(
            pool, size("F", "gc_coroutines", q), size("F", "gc_rows_each", q)
        )
    finally:
        await pool.close()
    return {
        "metrics": {
            "insert_commit_us": median(single),
            "pool10_inserts_per_s": round(pooled),
            "unnest_rows_per_s": round(unnest),
            "notify_us": median(notify),
            "group_commit_rows_per_s": round(gc_rate),
            "group_commit_batches": gc_batches,
        },
        "samples": {"insert_commit_us": single, "notify_us": notify},
    }


if __name__ == "__main__":
    child_main("floor", {"F": floor}, {"asyncpg": version_of("asyncpg")})
