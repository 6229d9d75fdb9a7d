"""Races inside workflows: timeouts, first-finished waits, recorded values, stray tasks."""

from __future__ import annotations

import asyncio
import datetime
import logging
import uuid

import anyio
import asyncpg
import pytest

from dbos_async import (
    DBOS,
    NonDeterministicWorkflowError,
    NotInWorkflowError,
    SetWorkflowID,
    WorkflowCancelledError,
)

delays: dict[str, float] = {}
ran: list[str] = []


@DBOS.step()
async def timed_step(label: str) -> str:
    await asyncio.sleep(delays.get(label, 0.0))
    ran.append(label)
    return label


# -- a timeout around a durable call ------------------------------------------------------


@DBOS.workflow()
async def with_timeout() -> str:
    try:
        async with asyncio.timeout(0.2):
            return await timed_step("slow")
    except TimeoutError:
        return await timed_step("fallback")


async def test_a_timeout_that_interrupted_a_step_interrupts_it_again_on_replay(
    dbos: DBOS,
) -> None:
    delays.update(slow=5.0)
    ran.clear()
    with SetWorkflowID("timeout"):
        assert await with_timeout() == "fallback"
    assert ran == ["fallback"]
    steps = await DBOS.list_workflow_steps("timeout")
    assert [(s.step_id, s.name.rsplit(".", 1)[-1], s.error is not None) for s in steps] == [
        (0, "timed_step", True),  # recorded as interrupted
        (1, "timed_step", False),
    ]
    # Replay with the slow step now instant: it must not return "slow".
    delays.update(slow=0.0)
    ran.clear()
    fork = await DBOS.fork_workflow("timeout", 2)
    assert await fork.get_result(timeout=10) == "fallback"
    assert ran == []


@DBOS.workflow()
async def timeout_during_the_write() -> str:
    try:
        async with asyncio.timeout(0.3):
            await timed_step("locked")
            return "in time"
    except TimeoutError:
        return await timed_step("late")


async def test_a_timeout_that_lands_while_the_checkpoint_is_written_wins(
    dbos: DBOS, db_url: str
) -> None:
    # The step's body is done, but its checkpoint write waits on a lock the
    # test holds, so the timeout lands during the write. What the workflow
    # went on with (the timeout) is what replay must see, whatever the write did.
    delays.clear()
    ran.clear()
    blocker = await asyncpg.connect(db_url, server_settings={"search_path": "dbos_async"})
    try:
        tx = blocker.transaction()
        await tx.start()
        await blocker.execute("LOCK TABLE operation_outputs IN SHARE MODE")
        with SetWorkflowID("write-race"):
            handle = await DBOS.start_workflow(timeout_during_the_write)
        with pytest.raises(TimeoutError):
            await handle.get_result(timeout=1.0)  # it is stuck behind the lock
        await tx.rollback()
    finally:
        await blocker.close()
    assert await handle.get_result(timeout=10) == "late"
    assert ran == ["locked", "late"]
    ran.clear()
    fork = await DBOS.fork_workflow("write-race", 2)
    assert await fork.get_result(timeout=10) == "late"
    assert ran == []


# -- waits whose outcome is which task finishes first -------------------------------------


async def two_tasks() -> tuple[asyncio.Task[str], asyncio.Task[str]]:
    return (
        asyncio.create_task(timed_step("t-fast")),
        asyncio.create_task(timed_step("t-slow")),
    )


@DBOS.workflow()
async def asyncio_wait_first() -> str:
    fast, slow = await two_tasks()
    done, _ = await asyncio.wait([fast, slow], return_when=asyncio.FIRST_COMPLETED)
    return done.pop().result()


@DBOS.workflow()
async def asyncio_as_completed() -> list[str]:
    return [await t for t in asyncio.as_completed(await two_tasks())]


@DBOS.workflow()
async def asyncio_wait_all() -> list[str]:
    fast, slow = await two_tasks()
    await asyncio.wait([fast, slow])
    return [fast.result(), slow.result()]


async def test_order_observing_asyncio_waits_are_refused_with_the_construct_named(
    dbos: DBOS,
) -> None:
    delays.update({"t-slow": 0.05})
    with pytest.raises(NonDeterministicWorkflowError, match=r"asyncio\.wait.*FIRST_COMPLETED"):
        await asyncio_wait_first()
    with pytest.raises(NonDeterministicWorkflowError, match=r"asyncio\.as_completed"):
        await asyncio_as_completed()
    assert await asyncio_wait_all() == ["t-fast", "t-slow"]  # order-free: allowed


async def branch(label: str) -> str:
    first = await timed_step(f"{label}-1")
    return first + "+" + await timed_step(f"{label}-2")


@DBOS.workflow()
async def first_of_coroutines() -> tuple[str, list[str]]:
    winner = await DBOS.wait_first([branch("a"), branch("b")])
    return winner.result(), sorted(ran_steps_of("a") + ran_steps_of("b"))


def ran_steps_of(label: str) -> list[str]:
    return [r for r in ran if r.startswith(label)]


async def test_wait_first_over_coroutines_records_the_winner_and_cancels_the_losers(
    dbos: DBOS,
) -> None:
    delays.clear()
    delays.update({"a-1": 0.01, "b-1": 0.3})
    ran.clear()
    with SetWorkflowID("first"):
        winner, seen = await first_of_coroutines()
    assert winner == "a-1+a-2"
    assert seen == ["a-1", "a-2"]  # b was cancelled in its first step
    # Replay with the opposite timing: a still wins, and nothing runs again.
    delays.update({"a-1": 0.3, "b-1": 0.0, "b-2": 0.0})
    ran.clear()
    fork = await DBOS.fork_workflow("first", 10)
    assert (await fork.get_result(timeout=10))[0] == "a-1+a-2"
    assert ran == []


@DBOS.workflow()
async def first_of_tasks() -> list[str]:
    fast, slow = await two_tasks()
    winner = await DBOS.wait_first([slow, fast])
    assert winner is fast
    return [winner.result(), await slow]  # the loser was left running: it is ours


async def test_wait_first_over_tasks_returns_the_task_and_leaves_the_others(dbos: DBOS) -> None:
    delays.update({"t-fast": 0.0, "t-slow": 0.05})
    with SetWorkflowID("first-tasks"):
        assert await first_of_tasks() == ["t-fast", "t-slow"]
    delays.update({"t-fast": 0.1, "t-slow": 0.0})
    fork = await DBOS.fork_workflow("first-tasks", 10)
    assert await fork.get_result(timeout=10) == ["t-fast", "t-slow"]


# -- recorded values -------------------------------------------------------------------------


@DBOS.workflow()
async def draws() -> list[object]:
    return [await DBOS.now(), await DBOS.random(), await DBOS.uuid4()]


async def test_now_random_and_uuid4_are_recorded_inside_workflows(dbos: DBOS) -> None:
    with SetWorkflowID("draws"):
        first = await draws()
    when, number, ident = first
    assert isinstance(when, datetime.datetime) and when.tzinfo is not None
    assert isinstance(number, float) and 0 <= number < 1
    assert isinstance(ident, uuid.UUID)
    fork = await DBOS.fork_workflow("draws", 3)
    assert await fork.get_result(timeout=10) == first
    steps = await DBOS.list_workflow_steps("draws")
    assert [s.name for s in steps] == ["DBOS.now", "DBOS.random", "DBOS.uuid4"]
    # Outside a workflow they are plain values, recorded nowhere.
    assert isinstance(await DBOS.now(), datetime.datetime)
    assert await DBOS.random() != await DBOS.random()


# -- tasks outside the structure ---------------------------------------------------------


@DBOS.step()
async def spawns_inside() -> str:
    # A task made inside a step body belongs to the step: its calls just run.
    return await asyncio.create_task(timed_step("inner"))


@DBOS.workflow()
async def step_with_a_task() -> str:
    return await spawns_inside()


async def test_a_task_spawned_in_a_step_body_is_part_of_the_step(dbos: DBOS) -> None:
    ran.clear()
    with SetWorkflowID("inner"):
        assert await step_with_a_task() == "inner"
    steps = await DBOS.list_workflow_steps("inner")
    assert [s.name.rsplit(".", 1)[-1] for s in steps] == ["spawns_inside"]
    ran.clear()
    fork = await DBOS.fork_workflow("inner", 1)
    assert await fork.get_result(timeout=10) == "inner"
    assert ran == []  # the step is recorded: neither it nor its task runs again


stray: list[asyncio.Task[str]] = []
stray_cancelled = asyncio.Event()


@DBOS.workflow()
async def fire_and_forget(gate: str) -> str:
    async def late() -> str:
        try:
            await asyncio.sleep(delays[gate])
        except asyncio.CancelledError:
            stray_cancelled.set()  # swallowed, to show what a durable call does after the end
        return await timed_step("too late")

    stray.append(asyncio.create_task(late()))
    await asyncio.sleep(0)  # let it start
    return "returned"


async def test_a_task_that_outlives_its_workflow_is_cancelled_and_cannot_record(
    dbos: DBOS, caplog: pytest.LogCaptureFixture
) -> None:
    delays["gate"] = 60.0
    stray.clear()
    stray_cancelled.clear()
    ran.clear()
    with caplog.at_level(logging.WARNING, logger="dbos_async.workflow"):
        with SetWorkflowID("forgetful"):
            assert await fire_and_forget("gate") == "returned"
    with anyio.fail_after(5):
        await stray_cancelled.wait()  # cancelled when its workflow returned
    with pytest.raises(NotInWorkflowError, match="outlived its workflow 'forgetful'"):
        await stray[0]
    assert ran == []
    assert any("still running" in r.getMessage() for r in caplog.records)


step_cancelled = asyncio.Event()


@DBOS.step()
async def parked_step() -> str:
    try:
        await asyncio.Event().wait()
    except asyncio.CancelledError:
        step_cancelled.set()
        raise
    return "never"


@DBOS.workflow()
async def unawaited_task() -> str:
    background = asyncio.create_task(parked_step())
    await DBOS.recv("never", timeout_seconds=60)  # not awaiting the task
    return await background


async def test_cancel_interrupts_a_step_in_a_task_the_workflow_is_not_awaiting(
    dbos: DBOS, conn: asyncpg.Connection
) -> None:
    step_cancelled.clear()
    with SetWorkflowID("unawaited"):
        handle = await DBOS.start_workflow(unawaited_task)
    await DBOS.cancel_workflow("unawaited")
    await step_cancelled.wait()  # interrupted, as a step awaited by the workflow is
    with pytest.raises(WorkflowCancelledError):
        await handle.get_result(timeout=5)
    recorded = await conn.fetchval("SELECT count(*) FROM operation_outputs WHERE step_id = 0")
    assert recorded == 0  # neither its outcome nor an interruption: it replays


# -- what runtime calls do inside takes no branch position --------------------------------

parked = asyncio.Event()
gate = asyncio.Event()
timed_out = asyncio.Event()


@DBOS.workflow()
async def status_under_a_timeout() -> str:
    parked.set()
    await gate.wait()  # the test locks workflow_status meanwhile
    try:
        async with asyncio.timeout(0.2):
            await DBOS.get_workflow_status("anything")
    except TimeoutError:
        timed_out.set()  # asyncpg created a task to cancel the query: not a branch

    async def after() -> str:
        return await timed_step("after")

    return await asyncio.create_task(after())


async def test_a_cancelled_management_call_takes_no_branch_position(
    dbos: DBOS, db_url: str
) -> None:
    for event in (parked, gate, timed_out):
        event.clear()
    with SetWorkflowID("mgmt-timeout"):
        handle = await DBOS.start_workflow(status_under_a_timeout)
    await parked.wait()
    blocker = await asyncpg.connect(db_url, server_settings={"search_path": "dbos_async"})
    try:
        async with blocker.transaction():
            await blocker.execute("LOCK TABLE workflow_status IN ACCESS EXCLUSIVE MODE")
            gate.set()
            await timed_out.wait()
    finally:
        await blocker.close()
    assert await handle.get_result(timeout=10) == "after"
    steps = await DBOS.list_workflow_steps("mgmt-timeout")
    assert [(s.branch, s.step_id) for s in steps] == [("0", 0)]
