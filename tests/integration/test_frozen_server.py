"""A server that stops answering cannot hold shutdown forever (issue 20, A.14).

The runtime's own backends are frozen with SIGSTOP (the server process stays
up and accepts new connections; the ones we hold just never answer), while a
workflow's step checkpoint is in flight. Shutdown must return within its
bound; nothing recorded is lost (the workflow stays PENDING and recovers).
"""

from __future__ import annotations

import asyncio
import os
import signal
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
        os.kill(pid, signal.SIGCONT)


async def _freeze_runtime_backends(conn: asyncpg.Connection, pids: list[int]) -> None:
    rows = await conn.fetch(
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
        " AND application_name = 'dbos_async'"
    )
    for row in rows:
        os.kill(row["pid"], signal.SIGSTOP)
        pids.append(row["pid"])
    assert pids


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
