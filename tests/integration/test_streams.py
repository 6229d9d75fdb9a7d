"""Streams: ordered values, end on close or on workflow end, exactly-once writes, few NOTIFYs."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from dbos_async import DBOS, NotInWorkflowError, SetWorkflowID, WorkflowNotFoundError

proceed = asyncio.Event()


@pytest.fixture(autouse=True)
def _reset() -> None:
    global proceed
    proceed = asyncio.Event()


@DBOS.step()
async def wait_for_go() -> None:
    await proceed.wait()


@DBOS.workflow()
async def producer(n: int, close: bool) -> int:
    for i in range(n):
        await DBOS.write_stream("numbers", i)
        if i == 1:
            await wait_for_go()
    if close:
        await DBOS.close_stream("numbers")
    return n


async def _read(dbos: DBOS, workflow_id: str, key: str = "numbers") -> list[object]:
    return [value async for value in dbos.read_stream(workflow_id, key)]


async def test_a_reader_sees_values_as_written_and_ends_at_close(dbos: DBOS) -> None:
    with SetWorkflowID("p1"):
        handle = await dbos.start_workflow(producer, 5, True)
    reader = asyncio.create_task(_read(dbos, "p1"))
    await asyncio.sleep(0)
    proceed.set()
    assert await asyncio.wait_for(reader, 5) == [0, 1, 2, 3, 4]
    assert await handle.get_result() == 5


async def test_a_stream_ends_when_its_workflow_finishes_without_closing(dbos: DBOS) -> None:
    proceed.set()
    with SetWorkflowID("p2"):
        handle = await dbos.start_workflow(producer, 3, False)
    reader = asyncio.create_task(_read(dbos, "p2"))
    await handle.get_result()
    assert await asyncio.wait_for(reader, 5) == [0, 1, 2]
    assert await _read(dbos, "p2", "other-key") == []


async def test_writes_are_exactly_once_across_replays(
    db_url: str, conn: asyncpg.Connection
) -> None:
    proceed.set()
    async with DBOS(database_url=db_url, app_version="test") as dbos:
        with SetWorkflowID("p3"):
            await producer(3, True)
    await conn.execute("UPDATE workflow_status SET status = 'PENDING' WHERE workflow_id = 'p3'")
    async with DBOS(database_url=db_url, app_version="test") as dbos:
        await (await dbos.retrieve_workflow("p3")).get_result(timeout=5)
        assert await _read(dbos, "p3") == [0, 1, 2]
    assert await conn.fetchval("SELECT count(*) FROM streams") == 4  # 3 values + the close


async def test_a_busy_stream_does_not_notify_once_per_value(db_url: str, dbos: DBOS) -> None:
    proceed.set()
    seen: list[str] = []
    listener = await asyncpg.connect(db_url)
    await listener.add_listener("dbos_async", lambda *args: seen.append(args[3]))
    try:
        with SetWorkflowID("p4"):
            await producer(200, True)
        assert await _read(dbos, "p4") == list(range(200))
        await listener.execute("SELECT 1")  # deliver what is pending
    finally:
        await listener.close()
    stream_notifications = [p for p in seen if p == "s:p4"]
    assert 1 <= len(stream_notifications) < 100, len(stream_notifications)


async def test_bad_stream_calls(dbos: DBOS) -> None:
    with pytest.raises(NotInWorkflowError):
        await DBOS.write_stream("k", 1)
    with pytest.raises(WorkflowNotFoundError):
        await _read(dbos, "nobody")
    with pytest.raises(ValueError, match="stream key"):
        await _read(dbos, "p1", "")
