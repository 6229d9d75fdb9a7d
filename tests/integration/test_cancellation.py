"""Timeouts and cancellation: prompt interruption, no later step, durable deadlines, resume."""

from __future__ import annotations

import asyncio
import time

import anyio
import asyncpg
import pytest

from dbos_async import (
    DBOS,
    Queue,
    SetWorkflowID,
    SetWorkflowTimeout,
    WorkflowCancelledError,
    WorkflowNotFoundError,
    WorkflowStatusString,
)
from dbos_async.queue import forget_queue

ledger: list[str] = []
gate = asyncio.Event()  # the long step has started
woke = asyncio.Event()  # the sleeper has started


@DBOS.step()
async def record(what: str) -> str:
    ledger.append(what)
    if what == "sleeper started":
        woke.set()
    return what


@DBOS.step()
async def long_step() -> None:
    ledger.append("long started")
    gate.set()
    await asyncio.sleep(60)
    ledger.append("long finished")


@DBOS.workflow()
async def cancellable() -> str:
    await record("first")
    await long_step()
    await record("after long")
    return "done"


@DBOS.workflow()
async def sleeper(seconds: float) -> str:
    await record("sleeper started")
    await DBOS.sleep(seconds)
    await record("sleeper woke")
    return "woke"


@DBOS.workflow()
async def parent_of_sleeper(seconds: float) -> str:
    return await sleeper(seconds)


@pytest.fixture(autouse=True)
def _reset() -> None:
    global gate, woke
    ledger.clear()
    gate, woke = asyncio.Event(), asyncio.Event()  # an Event binds to its first loop


async def _status(dbos: DBOS, workflow_id: str) -> WorkflowStatusString:
    status = await dbos.get_workflow_status(workflow_id)
    assert status is not None
    return status.status


async def test_cancel_interrupts_the_running_step_and_starts_no_later_step(
    dbos: DBOS, conn: asyncpg.Connection
) -> None:
    with SetWorkflowID("c1"):
        handle = await dbos.start_workflow(cancellable)
    await gate.wait()
    await dbos.cancel_workflow("c1")
    with pytest.raises(WorkflowCancelledError):
        await handle.get_result(timeout=5)
    assert await _status(dbos, "c1") is WorkflowStatusString.CANCELLED
    await anyio.sleep(0.1)  # nothing may run after the interruption
    assert ledger == ["first", "long started"]
    steps_recorded = await conn.fetchval(
        "SELECT count(*) FROM operation_outputs WHERE workflow_id = 'c1'"
    )
    assert steps_recorded == 1


async def test_resume_continues_a_cancelled_workflow_from_its_last_completed_step(
    dbos: DBOS,
) -> None:
    with SetWorkflowID("c2"):
        await dbos.start_workflow(cancellable)
    await gate.wait()
    await dbos.cancel_workflow("c2")
    with pytest.raises(WorkflowCancelledError):
        await (await dbos.retrieve_workflow("c2")).get_result(timeout=5)
    gate.clear()
    handle = await dbos.resume_workflow("c2")
    await gate.wait()  # the long step runs again: it never completed
    assert ledger == ["first", "long started", "long started"]  # "first" did not run again
    await dbos.cancel_workflow("c2")
    with pytest.raises(WorkflowCancelledError):
        await handle.get_result(timeout=5)


async def test_cancel_from_another_runtime_reaches_the_running_one(db_url: str) -> None:
    async with (
        DBOS(database_url=db_url, app_version="test", executor_id="a") as a,
        DBOS(database_url=db_url, app_version="test", executor_id="b") as b,
    ):
        with SetWorkflowID("c3"):
            await a.start_workflow(cancellable)
        await gate.wait()
        await b.cancel_workflow("c3")
        with pytest.raises(WorkflowCancelledError):  # b waits through NOTIFY
            await (await b.retrieve_workflow("c3")).get_result(timeout=5)
        with pytest.raises(WorkflowCancelledError):
            await (await a.retrieve_workflow("c3")).get_result(timeout=5)
    assert "after long" not in ledger


async def test_cancel_unknown_or_finished_workflows(dbos: DBOS) -> None:
    with pytest.raises(WorkflowNotFoundError):
        await dbos.cancel_workflow("nope")
    with SetWorkflowID("c4"):
        await sleeper(0)
    await dbos.cancel_workflow("c4")  # finished: left as it is
    assert await _status(dbos, "c4") is WorkflowStatusString.SUCCESS


async def test_timeout_cancels_the_workflow_and_its_child(dbos: DBOS) -> None:
    with SetWorkflowID("t1"), SetWorkflowTimeout(0.3):
        handle = await dbos.start_workflow(parent_of_sleeper, 30)
    with pytest.raises(WorkflowCancelledError):
        await handle.get_result(timeout=5)
    assert await _status(dbos, "t1") is WorkflowStatusString.CANCELLED
    child = await dbos.get_workflow_status("t1-0")
    assert child is not None and child.deadline_epoch_ms is not None
    with pytest.raises(WorkflowCancelledError):
        await (await dbos.retrieve_workflow("t1-0")).get_result(timeout=5)
    assert await _status(dbos, "t1-0") is WorkflowStatusString.CANCELLED
    assert "sleeper woke" not in ledger


async def test_a_deadline_that_passed_while_shut_down_is_enforced_on_relaunch(
    db_url: str,
) -> None:
    async with DBOS(database_url=db_url, app_version="test") as dbos:
        with SetWorkflowID("t2"), SetWorkflowTimeout(0.5):
            await dbos.start_workflow(sleeper, 30)
        with anyio.fail_after(5):
            await woke.wait()
    # Shut down: the workflow stays PENDING, never CANCELLED by the shutdown itself.
    conn = await asyncpg.connect(db_url, server_settings={"search_path": "dbos_async"})
    assert await conn.fetchval("SELECT status FROM workflow_status WHERE workflow_id='t2'") == (
        "PENDING"
    )
    await anyio.sleep(0.6)  # the deadline passes while nothing runs
    async with DBOS(database_url=db_url, app_version="test") as dbos:
        with pytest.raises(WorkflowCancelledError):
            await (await dbos.retrieve_workflow("t2")).get_result(timeout=5)
    assert await conn.fetchval("SELECT status FROM workflow_status WHERE workflow_id='t2'") == (
        "CANCELLED"
    )
    await conn.close()
    assert "sleeper woke" not in ledger


async def test_get_result_of_another_runtimes_workflow_is_woken_by_notify(db_url: str) -> None:
    async with (
        DBOS(database_url=db_url, app_version="test", executor_id="a") as a,
        DBOS(database_url=db_url, app_version="test", executor_id="b") as b,
    ):
        with SetWorkflowID("n1"):
            await a.start_workflow(sleeper, 0.2)
        waited = asyncio.create_task((await b.retrieve_workflow("n1")).get_result(timeout=5))
        assert await waited == "woke"


async def test_resuming_a_queued_workflow_enqueues_it_again_under_the_queues_limits(
    dbos: DBOS,
) -> None:
    global gate
    queue = Queue("one-at-a-time", concurrency=1)
    try:
        with SetWorkflowID("q1"):
            first = await queue.enqueue(cancellable)
        await gate.wait()
        await dbos.cancel_workflow("q1")
        with pytest.raises(WorkflowCancelledError):
            await first.get_result(timeout=5)
        gate = asyncio.Event()
        with SetWorkflowID("q2"):
            await queue.enqueue(cancellable)
        await gate.wait()  # q2 holds the only slot
        await dbos.resume_workflow("q1")
        assert await _status(dbos, "q1") is WorkflowStatusString.ENQUEUED  # not run past the limit
        gate = asyncio.Event()
        await dbos.cancel_workflow("q2")  # frees the slot: q1 is dequeued and runs again
        await gate.wait()
        assert await _status(dbos, "q1") is WorkflowStatusString.PENDING
        await dbos.cancel_workflow("q1")
    finally:
        forget_queue("one-at-a-time")


@DBOS.step()
def blocking_step(seconds: float) -> str:
    ledger.append("sync started")
    time.sleep(seconds)  # a thread: nothing can interrupt it
    ledger.append("sync finished")
    return "slept"


@DBOS.workflow()
async def sync_cancellable() -> str:
    await blocking_step(1.5)
    await record("after sync")
    return "done"


async def test_cancel_does_not_wait_for_a_sync_step_in_its_thread(dbos: DBOS) -> None:
    with SetWorkflowID("s1"):
        handle = await dbos.start_workflow(sync_cancellable)
    with anyio.fail_after(5):
        while "sync started" not in ledger:  # noqa: ASYNC110 - written by a worker thread
            await anyio.sleep(0.005)
    began = time.monotonic()
    await dbos.cancel_workflow("s1")
    with pytest.raises(WorkflowCancelledError):
        await handle.get_result(timeout=5)
    assert time.monotonic() - began < 1.0  # did not wait out the 1.5 s body
    assert "after sync" not in ledger


_children = Queue("children-of-timed-parents")


@DBOS.workflow()
async def parent_enqueuing_sleeper(seconds: float) -> str:
    handle = await _children.enqueue(sleeper, seconds)
    result: str = await handle.get_result()
    return result


async def test_an_enqueued_child_inherits_its_parents_deadline(dbos: DBOS) -> None:
    with SetWorkflowID("t3"), SetWorkflowTimeout(0.5):
        handle = await dbos.start_workflow(parent_enqueuing_sleeper, 30)
    with pytest.raises(WorkflowCancelledError):
        await handle.get_result(timeout=5)
    child = await dbos.get_workflow_status("t3-0")
    assert child is not None and child.deadline_epoch_ms is not None
    with pytest.raises(WorkflowCancelledError):
        await (await dbos.retrieve_workflow("t3-0")).get_result(timeout=5)
    assert "sleeper woke" not in ledger


_one_at_a_time = Queue("one-child-at-a-time", concurrency=1)


@DBOS.workflow()
async def parent_behind_a_full_queue(seconds: float) -> str:
    first = await _one_at_a_time.enqueue(sleeper, seconds)
    await _one_at_a_time.enqueue(sleeper, seconds)  # waits behind the first
    result: str = await first.get_result()
    return result


async def test_a_parents_deadline_cancels_its_children_still_enqueued(dbos: DBOS) -> None:
    with SetWorkflowID("t4"), SetWorkflowTimeout(0.5):
        handle = await dbos.start_workflow(parent_behind_a_full_queue, 30)
    with pytest.raises(WorkflowCancelledError):
        await handle.get_result(timeout=5)
    # The second child never started, and its deadline (the parent's) has
    # passed: it is cancelled with its parent, not left ENQUEUED until its
    # queue admits it.
    waiting = await dbos.get_workflow_status("t4-1")
    assert waiting is not None and waiting.status == "CANCELLED"
    with pytest.raises(WorkflowCancelledError):
        await (await dbos.retrieve_workflow("t4-0")).get_result(timeout=5)
