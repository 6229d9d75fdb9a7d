"""Queues in one process: enqueue, statuses, options, limits, wake-ups, the internal queue."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import anyio
import asyncpg
import pytest

from dbos_async import (
    DBOS,
    Queue,
    QueueDeduplicatedError,
    SerializationError,
    SetEnqueueOptions,
    SetWorkflowID,
    SetWorkflowTimeout,
    WorkflowConflictError,
    management,
)
from dbos_async.queue import enqueue_by_name, forget_queue
from dbos_async.queue_worker import POLL_SECONDS

MakeQueue = Callable[..., Queue]

# What the workflows below saw, per test (the runtime runs them in this process).
gates: dict[str, asyncio.Event] = {}
arrived: dict[str, asyncio.Event] = {}
declared: dict[str, Queue] = {}
started: list[tuple[str, float]] = []
running: dict[str, int] = {}
peak: dict[str, int] = {}


@pytest.fixture(autouse=True)
def _reset() -> Iterator[None]:
    gates.clear()
    arrived.clear()
    started.clear()
    running.clear()
    peak.clear()
    yield


@pytest.fixture
def make_queue() -> Iterator[MakeQueue]:
    names: list[str] = []

    def make(**options: Any) -> Queue:
        queue = Queue(f"q-{uuid.uuid4().hex[:8]}", **options)
        names.append(queue.name)
        declared[queue.name] = queue
        return queue

    yield make
    for name in names:
        forget_queue(name)
        declared.pop(name, None)


@DBOS.workflow(name="tq.double")
async def double(x: int) -> int:
    started.append((str(x), time.perf_counter()))
    return x * 2


@DBOS.step(name="tq.add_one")
async def add_one(x: int) -> int:
    return x + 1


@DBOS.workflow(name="tq.tracked")
async def tracked(label: str, group: str, hold: float) -> str:
    started.append((label, time.perf_counter()))
    if label in arrived:
        arrived[label].set()
    running[group] = running.get(group, 0) + 1
    peak[group] = max(peak.get(group, 0), running[group])
    try:
        gate = gates.get(label)
        if gate is not None:
            await gate.wait()
        await asyncio.sleep(hold)
    finally:
        running[group] -= 1
    return label


async def status_of(conn: asyncpg.Connection, workflow_id: str) -> dict[str, Any]:
    row = await conn.fetchrow("SELECT * FROM workflow_status WHERE workflow_id = $1", workflow_id)
    assert row is not None
    return dict(row)


async def test_enqueue_runs_a_workflow_and_a_step(dbos: DBOS, make_queue: MakeQueue) -> None:
    q = make_queue()
    handle = await q.enqueue(double, 21)
    assert await handle.get_result() == 42
    status = await handle.get_status()
    assert (status.status.value, status.queue_name, status.executor_id) == (
        "SUCCESS",
        q.name,
        "local",
    )
    step_handle = await q.enqueue(add_one, 1)
    assert await step_handle.get_result() == 2
    assert [s["name"] for s in await _steps(dbos, step_handle.workflow_id)] == ["tq.add_one"]


async def _steps(dbos: DBOS, workflow_id: str) -> list[Any]:
    async with dbos._runtime.connection() as c:
        rows = await c.fetch(
            "SELECT function_name AS name FROM operation_outputs WHERE workflow_id = $1",
            workflow_id,
        )
    return list(rows)


async def test_enqueued_until_a_worker_declares_the_queue_then_pending(
    dbos: DBOS, conn: asyncpg.Connection
) -> None:
    name = f"late-{uuid.uuid4().hex[:8]}"
    gates["late"] = asyncio.Event()
    arrived["late"] = asyncio.Event()
    wid = await enqueue_by_name(
        dbos._runtime.pool,
        queue_name=name,
        workflow_name="tq.tracked",
        args=("late", "g", 0.0),
    )
    row = await status_of(conn, wid)
    assert (row["status"], row["executor_id"], row["started_at"]) == ("ENQUEUED", None, None)
    try:
        Queue(name)  # declared after launch: the running worker picks it up
        with anyio.fail_after(5):
            await arrived["late"].wait()
        row = await status_of(conn, wid)
        assert (row["status"], row["executor_id"]) == ("PENDING", "local")
        assert row["started_at"] is not None
        gates["late"].set()
        assert await (await dbos.retrieve_workflow(wid)).get_result() == "late"
    finally:
        forget_queue(name)


async def test_an_existing_id_returns_a_handle_and_another_function_conflicts(
    dbos: DBOS, make_queue: MakeQueue, conn: asyncpg.Connection
) -> None:
    q = make_queue()
    with SetWorkflowID("same-id"):
        first = await q.enqueue(double, 1)
    with SetWorkflowID("same-id"):
        again = await q.enqueue(double, 99)  # runs nothing: the first execution stands
    assert again.workflow_id == "same-id" and await again.get_result() == 2
    with SetWorkflowID("same-id"), pytest.raises(WorkflowConflictError):
        await q.enqueue(tracked, "x", "g", 0.0)
    assert await first.get_result() == 2
    assert await conn.fetchval("SELECT count(*) FROM workflow_status") == 1


async def test_unencodable_arguments_leave_nothing_behind(
    dbos: DBOS, make_queue: MakeQueue, conn: asyncpg.Connection
) -> None:
    q = make_queue()
    with pytest.raises(SerializationError):
        await q.enqueue(double, object())  # type: ignore[arg-type]
    assert await conn.fetchval("SELECT count(*) FROM workflow_status") == 0


async def test_deduplication_holds_while_live_then_frees(dbos: DBOS, make_queue: MakeQueue) -> None:
    q = make_queue()
    other = make_queue()
    gates["d1"] = asyncio.Event()
    with SetEnqueueOptions(deduplication_id="user-1"):
        first = await q.enqueue(tracked, "d1", "g", 0.0)
        with pytest.raises(QueueDeduplicatedError) as caught:
            await q.enqueue(tracked, "d2", "g", 0.0)
        assert (caught.value.queue_name, caught.value.deduplication_id) == (q.name, "user-1")
        await other.enqueue(double, 5)  # another queue: no conflict
    assert (await first.get_status()).deduplication_id == "user-1"
    gates["d1"].set()
    await first.get_result()
    with SetEnqueueOptions(deduplication_id="user-1"):
        assert await (await q.enqueue(tracked, "d3", "g", 0.0)).get_result() == "d3"


async def test_fifo_and_priority_order(dbos: DBOS, make_queue: MakeQueue) -> None:
    fifo = make_queue(concurrency=1)
    gates["block-f"] = asyncio.Event()
    blocker = await fifo.enqueue(tracked, "block-f", "f", 0.0)
    handles = [await fifo.enqueue(tracked, f"f{i}", "f", 0.0) for i in range(5)]
    gates["block-f"].set()
    await asyncio.gather(blocker.get_result(), *(h.get_result() for h in handles))
    assert [label for label, _ in started] == ["block-f", "f0", "f1", "f2", "f3", "f4"]

    started.clear()
    prio = make_queue(concurrency=1, priority_enabled=True)
    gates["block-p"] = asyncio.Event()
    blocker = await prio.enqueue(tracked, "block-p", "p", 0.0)
    handles = []
    for label, priority in [("p5", 5), ("p1a", 1), ("p3", 3), ("p1b", 1), ("p0", 0)]:
        with SetEnqueueOptions(priority=priority):
            handles.append(await prio.enqueue(tracked, label, "p", 0.0))
    gates["block-p"].set()
    await asyncio.gather(blocker.get_result(), *(h.get_result() for h in handles))
    assert [label for label, _ in started] == ["block-p", "p0", "p1a", "p1b", "p3", "p5"]
    with SetEnqueueOptions(priority=1), pytest.raises(ValueError, match="priority_enabled"):
        await fifo.enqueue(double, 1)


async def test_concurrency_and_worker_concurrency_hold(dbos: DBOS, make_queue: MakeQueue) -> None:
    wide = make_queue(concurrency=3)
    narrow = make_queue(concurrency=5, worker_concurrency=2)
    begin = time.perf_counter()
    handles = [await wide.enqueue(tracked, f"w{i}", "wide", 0.02) for i in range(12)]
    handles += [await narrow.enqueue(tracked, f"n{i}", "narrow", 0.02) for i in range(8)]
    await asyncio.gather(*(h.get_result() for h in handles))
    assert peak == {"wide": 3, "narrow": 2}
    # Every slot freed by a completion is refilled through its NOTIFY, not the 10 s poll.
    assert time.perf_counter() - begin < 3


async def test_the_rate_limiter_holds_in_every_window(
    dbos: DBOS, make_queue: MakeQueue, conn: asyncpg.Connection
) -> None:
    q = make_queue(limiter={"limit": 3, "period": 0.2})
    handles = [await q.enqueue(double, i) for i in range(10)]
    await asyncio.gather(*(h.get_result() for h in handles))
    starts = sorted(
        r[0]
        for r in await conn.fetch(
            "SELECT started_at FROM workflow_status WHERE queue_name = $1", q.name
        )
    )
    assert max(sum(1 for t in starts if s <= t < s + 200) for s in starts) == 3
    assert starts[-1] - starts[0] >= 3 * 200  # 10 starts need four windows


async def test_partitions_apply_the_limits_per_key(dbos: DBOS, make_queue: MakeQueue) -> None:
    q = make_queue(concurrency=1, partition_queue=True)
    handles = []
    for key in ("a", "b"):
        for i in range(3):
            with SetEnqueueOptions(queue_partition_key=key):
                handles.append(await q.enqueue(tracked, f"{key}{i}", key, 0.03))
    await asyncio.gather(*(h.get_result() for h in handles))
    assert peak == {"a": 1, "b": 1}
    first_b = next(t for label, t in started if label.startswith("b"))
    last_a = max(t for label, t in started if label.startswith("a"))
    assert first_b < last_a  # the partitions ran side by side
    with pytest.raises(ValueError, match="partitioned"):
        await q.enqueue(double, 1)


async def test_delay_and_timeout_count_from_the_dequeue(
    dbos: DBOS, make_queue: MakeQueue, conn: asyncpg.Connection
) -> None:
    q = make_queue(concurrency=1)
    with SetEnqueueOptions(delay_seconds=0.3):
        delayed = await q.enqueue(double, 7)
    assert await delayed.get_result() == 14
    row = await status_of(conn, delayed.workflow_id)
    assert row["started_at"] - row["created_at"] >= 300 - 5  # two clocks, same machine

    gates["slow"] = asyncio.Event()
    blocker = await q.enqueue(tracked, "slow", "t", 0.0)
    with SetWorkflowTimeout(0.5):
        timed = await q.enqueue(tracked, "timed", "t", 0.0)
    await asyncio.sleep(0.6)  # longer than its timeout, spent waiting in the queue
    gates["slow"].set()
    await blocker.get_result()
    assert await timed.get_result() == "timed"  # not cancelled: the clock starts at dequeue
    row = await status_of(conn, timed.workflow_id)
    # 500 ms from the dequeue by the claimer's clock, read just before the claim
    # (started_at is the database's clock, at the claim): two clocks, same machine.
    assert 0 <= row["started_at"] + 500 - row["deadline_epoch_ms"] < 1000


@DBOS.workflow(name="tq.parent")
async def parent(queue_name: str) -> list[int]:
    q = declared[queue_name]
    first = await q.enqueue(double, 1)
    second = await q.enqueue(add_one, 10)
    return [await first.get_result(), await second.get_result()]


async def test_enqueue_inside_a_workflow_is_a_checkpoint(
    db_url: str, make_queue: MakeQueue, conn: asyncpg.Connection
) -> None:
    q = make_queue()
    async with DBOS(database_url=db_url, app_version="test") as dbos:
        with SetWorkflowID("parent-1"):
            assert await (await dbos.start_workflow(parent, q.name)).get_result() == [2, 11]
    children = await conn.fetch(
        "SELECT workflow_id, parent_workflow_id FROM workflow_status "
        "WHERE parent_workflow_id = 'parent-1' ORDER BY workflow_id"
    )
    assert [r[0] for r in children] == ["parent-1-0", "parent-1-1"]
    steps = await conn.fetch(
        "SELECT step_id, function_name, child_workflow_id FROM operation_outputs "
        "WHERE workflow_id = 'parent-1' ORDER BY step_id"
    )
    assert [tuple(r) for r in steps] == [
        (0, "tq.double", "parent-1-0"),
        (1, "tq.add_one", "parent-1-1"),
    ]
    # Replay: the recorded handles come back, nothing is enqueued or run again.
    await conn.execute(
        "UPDATE workflow_status SET status = 'PENDING' WHERE workflow_id = 'parent-1'"
    )
    started.clear()
    async with DBOS(database_url=db_url, app_version="test") as dbos:
        assert await (await dbos.retrieve_workflow("parent-1")).get_result() == [2, 11]
    assert started == []
    assert await conn.fetchval("SELECT count(*) FROM workflow_status") == 3


@DBOS.workflow(name="tq.dedup_parent")
async def dedup_parent(queue_name: str) -> str:
    try:
        with SetEnqueueOptions(deduplication_id="once"):
            await declared[queue_name].enqueue(double, 3)
    except QueueDeduplicatedError:
        return "deduplicated"
    return "enqueued"


async def test_a_deduplicated_enqueue_is_recorded_and_replays_the_same(
    db_url: str, make_queue: MakeQueue, conn: asyncpg.Connection
) -> None:
    q = make_queue()
    gates["hold"] = asyncio.Event()
    async with DBOS(database_url=db_url, app_version="test") as dbos:
        with SetEnqueueOptions(deduplication_id="once"):
            holder = await q.enqueue(tracked, "hold", "h", 0.0)  # live until the gate opens
        with SetWorkflowID("dp"):
            assert await (await dbos.start_workflow(dedup_parent, q.name)).get_result() == (
                "deduplicated"
            )
        gates["hold"].set()
        await holder.get_result()
    await conn.execute("UPDATE workflow_status SET status = 'PENDING' WHERE workflow_id = 'dp'")
    async with DBOS(database_url=db_url, app_version="test") as dbos:
        # The ID is free now, but replay returns what was recorded.
        assert await (await dbos.retrieve_workflow("dp")).get_result() == "deduplicated"
    assert await conn.fetchval("SELECT count(*) FROM workflow_status") == 2


async def test_idle_enqueue_to_start_is_woken_by_notify(dbos: DBOS, make_queue: MakeQueue) -> None:
    q = make_queue()
    latencies = []
    for i in range(15):
        await asyncio.sleep(0.02)  # let the worker go idle on its watch
        begin = time.perf_counter()
        handle = await q.enqueue(double, i)
        await handle.get_result()
        latencies.append(started[-1][1] - begin)
    # Woken by the enqueue's NOTIFY, not by the safety poll (POLL_SECONDS). How
    # fast is for benchmarks/ (W4: about 4 ms here), not for a timing assertion.
    assert max(latencies) < POLL_SECONDS / 10, latencies


async def test_cancelling_a_queued_workflow_frees_its_slot(
    dbos: DBOS, make_queue: MakeQueue
) -> None:
    q = make_queue(concurrency=1)
    gates["stuck"] = asyncio.Event()
    stuck = await q.enqueue(tracked, "stuck", "c", 0.0)
    waiting = await q.enqueue(double, 4)
    await asyncio.sleep(0.05)
    assert (await waiting.get_status()).status.value == "ENQUEUED"
    await dbos.cancel_workflow(stuck.workflow_id)
    with anyio.fail_after(3):  # through the cancel's q:<queue> notification
        assert await waiting.get_result() == 8


@DBOS.workflow(name="tq.flaky")
async def flaky(fail: bool) -> str:
    if fail and not gates.get("fixed"):
        raise RuntimeError("boom")
    return "ok"


async def test_a_client_resume_runs_on_the_internal_queue(dbos: DBOS) -> None:
    with SetWorkflowID("to-resume"):
        with pytest.raises(RuntimeError):
            await flaky(True)
    gates["fixed"] = asyncio.Event()
    await management.resume_workflow(dbos._runtime.pool, "to-resume")  # no runtime: enqueued
    with anyio.fail_after(3):
        assert await (await dbos.retrieve_workflow("to-resume")).get_result() == "ok"
    status = await dbos.get_workflow_status("to-resume")
    assert status is not None and status.queue_name == management.INTERNAL_QUEUE


@pytest.fixture
async def pool(db_url: str) -> AsyncIterator[asyncpg.Pool]:
    from dbos_async.systemdb.pool import create_pool

    p = await create_pool(db_url, schema="dbos_async", max_size=2)
    yield p
    await p.close()


async def test_enqueue_by_name_needs_no_runtime(
    pool: asyncpg.Pool, conn: asyncpg.Connection
) -> None:
    wid = await enqueue_by_name(
        pool,
        queue_name="client-q",
        workflow_name="some.workflow",
        args=(1, "a"),
        kwargs={"k": [1]},
        workflow_id="from-client",
        deduplication_id="dd",
        priority=4,
        delay_seconds=2,
    )
    assert wid == "from-client"
    row = await status_of(conn, wid)
    assert (row["status"], row["queue_name"], row["priority"], row["app_version"]) == (
        "ENQUEUED",
        "client-q",
        4,
        None,
    )
    assert row["not_before"] - row["created_at"] >= 2000 - 5
    with pytest.raises(QueueDeduplicatedError):
        await enqueue_by_name(
            pool, queue_name="client-q", workflow_name="some.workflow", deduplication_id="dd"
        )
    assert (
        await enqueue_by_name(
            pool, queue_name="client-q", workflow_name="some.workflow", workflow_id="from-client"
        )
        == "from-client"
    )


async def test_resume_starts_an_enqueued_workflow_now_bypassing_its_queue(
    dbos: DBOS, make_queue: MakeQueue, conn: asyncpg.Connection
) -> None:
    q = make_queue(concurrency=1)
    gates["holder"] = asyncio.Event()
    arrived["holder"] = asyncio.Event()
    holder = await q.enqueue(tracked, "holder", "bypass", 0.0)
    await arrived["holder"].wait()  # it holds the queue's only slot
    waiting = await q.enqueue(tracked, "waiting", "bypass", 0.0)
    assert (await status_of(conn, waiting.workflow_id))["status"] == "ENQUEUED"
    resumed = await DBOS.resume_workflow(waiting.workflow_id)
    assert await resumed.get_result(timeout=5) == "waiting"  # the slot is still held
    row = await status_of(conn, waiting.workflow_id)
    assert (row["status"], row["queue_name"]) == ("SUCCESS", None)  # it left its queue
    gates["holder"].set()
    assert await holder.get_result(timeout=5) == "holder"
