"""Cancellation is exact: in-process at once, never missed, never forged."""

from __future__ import annotations

import asyncio

import anyio
import asyncpg
import pytest

from dbos_async import DBOS, DBOSClient, SetWorkflowID, SetWorkflowTimeout, WorkflowCancelledError

ran: list[str] = []
started = asyncio.Event()
release = asyncio.Event()


@DBOS.step()
async def held(label: str) -> str:
    ran.append(label)
    started.set()
    await release.wait()
    return label


@DBOS.step()
async def after(label: str) -> str:
    ran.append(label)
    return label


@DBOS.workflow()
async def two_steps() -> str:
    await held("first")
    return await after("second")


@DBOS.workflow()
async def returns_after_the_gate() -> str:
    await after("only")
    started.set()
    await release.wait()  # plain code: the last checkpoint is behind it
    return "done"


@DBOS.workflow()
async def waits_long() -> object:
    return await DBOS.recv("never", timeout_seconds=60)


@pytest.fixture(autouse=True)
def _reset() -> None:
    global started, release  # each test runs on its own loop: fresh events
    ran.clear()
    started, release = asyncio.Event(), asyncio.Event()


async def cut_listener(conn: asyncpg.Connection) -> None:
    """Kill the runtime's LISTEN connection: notifications sent meanwhile are lost."""
    killed = await conn.fetchval(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
        "WHERE application_name LIKE 'dbos_async listener%' AND datname = current_database()"
    )
    assert killed == 1


async def test_an_in_process_cancel_takes_effect_before_it_returns(
    dbos: DBOS, conn: asyncpg.Connection
) -> None:
    with SetWorkflowID("here"):
        handle = await DBOS.start_workflow(two_steps)
    await started.wait()
    await cut_listener(conn)  # no notification will help
    await DBOS.cancel_workflow("here")
    release.set()
    with pytest.raises(WorkflowCancelledError):
        await handle.get_result(timeout=10)
    assert ran == ["first"]  # no later step started


async def test_a_cancel_missed_by_the_listener_stops_the_next_checkpoint(
    dbos: DBOS, db_url: str, conn: asyncpg.Connection
) -> None:
    with SetWorkflowID("missed"):
        handle = await DBOS.start_workflow(two_steps)
    await started.wait()
    await cut_listener(conn)
    async with DBOSClient(db_url) as client:  # another process, as far as the runtime knows
        await client.cancel_workflow("missed")
    release.set()
    with pytest.raises(WorkflowCancelledError):
        await handle.get_result(timeout=10)
    assert ran == ["first"]


async def test_a_cancel_missed_by_the_listener_is_found_when_it_reconnects(
    dbos: DBOS, db_url: str, conn: asyncpg.Connection
) -> None:
    with SetWorkflowID("waiting"):
        handle = await DBOS.start_workflow(waits_long)
    await cut_listener(conn)
    async with DBOSClient(db_url) as client:
        await client.cancel_workflow("waiting")
    with pytest.raises(WorkflowCancelledError):  # not after recv's 60 s
        await handle.get_result(timeout=10)


async def test_a_handle_never_returns_a_value_for_a_cancelled_row(
    dbos: DBOS, db_url: str, conn: asyncpg.Connection
) -> None:
    with SetWorkflowID("raced"):
        handle = await DBOS.start_workflow(returns_after_the_gate)
    await started.wait()
    await cut_listener(conn)
    async with DBOSClient(db_url) as client:
        await client.cancel_workflow("raced")
    release.set()  # it returns: but its row says CANCELLED
    with pytest.raises(WorkflowCancelledError):
        await handle.get_result(timeout=10)


async def test_forged_notifications_stop_nothing(dbos: DBOS, conn: asyncpg.Connection) -> None:
    with SetWorkflowID("forged"):
        handle = await DBOS.start_workflow(two_steps)
    await started.wait()
    # Any role that may connect can NOTIFY: the runtime re-reads the row first.
    await conn.execute("SELECT pg_notify(current_schema(), 'c:forged')")
    await conn.execute("SELECT pg_notify(current_schema(), 'a:999:forged')")
    await anyio.sleep(0.2)  # nothing announces "a notification was ignored"
    release.set()
    assert await handle.get_result(timeout=10) == "second"
    assert ran == ["first", "second"]


async def test_a_deadline_cancels_only_for_the_current_owner(
    dbos: DBOS, conn: asyncpg.Connection
) -> None:
    with SetWorkflowID("stale"), SetWorkflowTimeout(0.5):
        handle = await DBOS.start_workflow(two_steps)
    await started.wait()
    # Another runtime adopted it meanwhile (its fence moved on); this one hears nothing.
    await cut_listener(conn)
    await conn.execute(
        "UPDATE workflow_status SET fence = fence + 1, executor_id = 'other' "
        "WHERE workflow_id = 'stale'"
    )
    with pytest.raises(Exception):  # noqa: B017 - whatever this stale runtime reports
        await handle.get_result(timeout=5)
    # Its deadline passed here, but the row belongs to the new owner: left PENDING.
    assert await conn.fetchval("SELECT status FROM workflow_status WHERE workflow_id='stale'") == (
        "PENDING"
    )


@DBOS.workflow()
async def held_in_a_task_group() -> list[str]:
    out: list[str] = []

    async def branch() -> None:
        out.append(await held("in a branch"))
        out.append(await after("after it"))

    async with anyio.create_task_group() as tg:
        tg.start_soon(branch)
    return out


async def test_a_branch_fenced_off_inside_a_task_group_ends_the_workflow_not_the_runtime(
    dbos: DBOS, conn: asyncpg.Connection
) -> None:
    with SetWorkflowID("grouped"):
        handle = await dbos.start_workflow(held_in_a_task_group)
    await started.wait()
    # Cancelled behind the runtime's back (no notification): the branch learns
    # it from its checkpoint, inside the workflow's own task group.
    await conn.execute(
        "UPDATE workflow_status SET status = 'CANCELLED' WHERE workflow_id = 'grouped'"
    )
    release.set()
    with pytest.raises(WorkflowCancelledError):
        await handle.get_result(timeout=10)
    assert ran == ["in a branch"]  # nothing after the fenced checkpoint
    assert dbos._runtime.state.value == "running"
    with SetWorkflowID("after-the-fence"):
        assert await after("still serving") == "still serving"


async def test_a_timeout_says_the_deadline_passed_and_when(dbos: DBOS, db_url: str) -> None:
    # Issue 19, item 3: a timed-out workflow does not just read "was cancelled".
    with SetWorkflowID("timed"), SetWorkflowTimeout(0.2):
        handle = await DBOS.start_workflow(waits_long)
    with pytest.raises(WorkflowCancelledError) as here:
        await handle.get_result(timeout=10)
    async with DBOSClient(db_url) as client:  # read from the row, as elsewhere
        with pytest.raises(WorkflowCancelledError) as there:
            await (await client.retrieve_workflow("timed")).get_result(timeout=10)
        with SetWorkflowID("cancelled"):
            cancelled = await DBOS.start_workflow(waits_long)
        await client.cancel_workflow("cancelled")
        with pytest.raises(WorkflowCancelledError) as plain:
            await (await client.retrieve_workflow("cancelled")).get_result(timeout=10)
    status = await handle.get_status()
    for caught in (here.value, there.value):
        assert caught.deadline_epoch_ms == status.deadline_epoch_ms is not None
        assert "timed out: its deadline passed at 20" in str(caught), caught
    assert plain.value.deadline_epoch_ms is None and "was cancelled" in str(plain.value)
    with pytest.raises(WorkflowCancelledError):
        await cancelled.get_result(timeout=10)
