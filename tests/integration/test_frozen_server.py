"""A server that stops answering cannot hold shutdown forever (issue 20, A.14).

The runtime's own backends are frozen with SIGSTOP (the server process stays
up and accepts new connections; the ones we hold just never answer), while a
workflow's step checkpoint is in flight. Shutdown must return within its
bound; nothing recorded is lost (the workflow stays PENDING and recovers).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import AsyncIterator

import anyio
import asyncpg
import pytest

from dbos_async import DBOS, DBOSError, SetWorkflowID

ran: list[str] = []


@DBOS.step()
async def noted(entry: str) -> str:
    ran.append(entry)
    return entry


@DBOS.workflow()
async def two_steps() -> list[str]:
    return [await noted("one"), await noted("two")]


@pytest.fixture
async def frozen(conn: asyncpg.Connection) -> AsyncIterator[list[int]]:
    """Backends stopped by a test; each is continued at the end, whatever happened."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)


def _stopped_idle(pid: int) -> bool:
    """Wait for the kernel to stop the process; whether it stopped idle.

    SIGSTOP takes effect at the process's next tick, within microseconds;
    /proc is the only place that says when, and it has nothing to wait on.
    "Idle" is the process title the backend sets before it reads the next
    message: it holds no lock and is in no transaction. (pg_stat_activity
    is no help: a Bind runs in a transaction while it still reads "idle".)
    """
    for _ in range(1000):
        try:
            with open(f"/proc/{pid}/stat") as stat:
                # The state follows the command name, which is in parentheses.
                stopped = stat.read().rsplit(")", 1)[1].split()[0] == "T"
            if stopped:
                with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
                    return cmdline.read().rstrip(b"\0 ").endswith(b" idle")
        except FileNotFoundError:
            return False  # gone: it closed its connection
        time.sleep(0.0001)
    raise AssertionError(f"backend {pid} did not stop")


async def _freeze_runtime_backends(conn: asyncpg.Connection, pids: list[int]) -> None:
    """SIGSTOP every backend of the runtime, each while it is idle.

    A backend stopped mid-statement may hold a lock (or a lightweight lock in
    shared memory) that every other backend, and every new connection, then
    waits for: the whole server would hang, not just the runtime's
    connections. So each is stopped, and kept stopped only if it was idle;
    one caught working is continued and tried again.
    """
    query = (
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
        " AND application_name = 'dbos_async'"
    )
    with anyio.fail_after(10):
        while True:
            pending = [row["pid"] for row in await conn.fetch(query) if row["pid"] not in pids]
            if pids and not pending:
                return
            for pid in pending:
                pids.append(pid)  # the fixture continues it, whatever happens next
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGSTOP)
                if not await anyio.to_thread.run_sync(_stopped_idle, pid):
                    pids.remove(pid)
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGCONT)
            await asyncio.sleep(0.01)  # let the ones caught working finish


async def test_shutdown_returns_while_the_server_is_frozen(
    db_url: str, conn: asyncpg.Connection, frozen: list[int]
) -> None:
    ran.clear()
    dbos = DBOS(database_url=db_url, app_version="test")
    await dbos.launch()
    dbos._runtime.shutdown_grace = 1.0
    await _freeze_runtime_backends(conn, frozen)
    with SetWorkflowID("frozen"):
        # Its start row goes to a frozen backend; nothing answers.
        start = asyncio.ensure_future(dbos.start_workflow(two_steps))
        await asyncio.sleep(0)  # part of the scenario: the start is in flight
    with anyio.fail_after(20):  # not forever; the grace is 1 s
        await dbos.shutdown()
    # The start was never acknowledged: its caller hears so, and nothing ran.
    with pytest.raises(DBOSError):
        await start
    assert ran == []
    for pid in frozen:
        os.kill(pid, signal.SIGCONT)
    frozen.clear()
    # Whatever reached the database before the freeze recovers like any PENDING workflow.
    async with DBOS(database_url=db_url, app_version="test") as again:
        status = await again.get_workflow_status("frozen")
        if status is not None:
            handle = await again.retrieve_workflow("frozen")
            assert await handle.get_result(timeout=20) == ["one", "two"]


async def test_a_step_whose_backend_freezes_times_out_and_is_written_again(
    db_url: str, conn: asyncpg.Connection, frozen: list[int]
) -> None:
    ran.clear()
    dbos = DBOS(database_url=db_url, app_version="test")
    dbos._runtime.command_timeout = 1.0
    async with dbos:
        await _freeze_runtime_backends(conn, frozen)
        # Every connection the runtime holds is frozen; new ones answer. Each
        # statement sent on a frozen one times out, and is sent again on a new one.
        with SetWorkflowID("thawed"):
            handle = await dbos.start_workflow(two_steps)
        assert await handle.get_result(timeout=30) == ["one", "two"]
    assert ran == ["one", "two"]
