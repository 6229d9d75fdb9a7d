"""send/recv and events: exactly-once delivery, durable timeouts, NOTIFY wake-ups."""

from __future__ import annotations

import asyncio
import time

import anyio
import asyncpg
import pytest

from dbos_async import (
    DBOS,
    DBOSError,
    NotInWorkflowError,
    SerializationError,
    SetWorkflowID,
    WorkflowNotFoundError,
)
from dbos_async.systemdb import messages as msg_table
from dbos_async.systemdb.steps import StepRecord

started = asyncio.Event()


@pytest.fixture(autouse=True)
def _reset() -> None:
    global started
    started = asyncio.Event()  # an Event binds to its first loop


@DBOS.step()
async def mark_started() -> None:
    started.set()


@DBOS.workflow()
async def receiver(topic: str | None, count: int, wait: float) -> list[object]:
    await mark_started()
    return [await DBOS.recv(topic, timeout_seconds=wait) for _ in range(count)]


@DBOS.workflow()
async def sender(destination: str, messages: list[str], topic: str | None) -> None:
    for message in messages:
        await DBOS.send(destination, message, topic=topic)


@DBOS.workflow()
async def event_setter(values: list[int]) -> None:
    for i, value in enumerate(values):
        await DBOS.set_event("progress", value)
        await DBOS.set_event(f"k{i}", value)


@DBOS.workflow()
async def event_reader(target: str, key: str, wait: float) -> object:
    return await DBOS.get_event(target, key, timeout_seconds=wait)


@DBOS.workflow()
async def big_event(value: str) -> None:
    await DBOS.set_event("big", value)


async def test_messages_are_fifo_per_topic_and_sent_before_recv_are_kept(dbos: DBOS) -> None:
    with SetWorkflowID("r1"):
        handle = await dbos.start_workflow(receiver, "t", 3, 5)
    await dbos.send("r1", "other-topic", topic="u")  # not on the awaited topic
    await dbos.send("r1", "a", topic="t")
    await dbos.send("r1", "b", topic="t")
    await dbos.send("r1", "c", topic="t")
    assert await handle.get_result(timeout=5) == ["a", "b", "c"]


async def test_recv_times_out_with_none(dbos: DBOS) -> None:
    assert await receiver(None, 1, 0.05) == [None]


async def test_send_from_workflow_is_exactly_once_across_replays(
    db_url: str, conn: asyncpg.Connection
) -> None:
    async with DBOS(database_url=db_url, app_version="test") as dbos:
        with SetWorkflowID("dest"):
            await dbos.start_workflow(receiver, "t", 0, 1)
        with SetWorkflowID("s1"):
            await sender("dest", ["x", "y"], "t")
    await conn.execute("UPDATE workflow_status SET status = 'PENDING' WHERE workflow_id = 's1'")
    async with DBOS(database_url=db_url, app_version="test") as dbos:
        await (await dbos.retrieve_workflow("s1")).get_result(timeout=5)
    rows = await conn.fetch("SELECT payload FROM messages WHERE destination_id = 'dest'")
    assert [r[0] for r in rows] == ['"x"', '"y"']


async def test_recv_replays_what_it_consumed_and_never_takes_a_second_message(
    db_url: str, conn: asyncpg.Connection
) -> None:
    async with DBOS(database_url=db_url, app_version="test") as dbos:
        with SetWorkflowID("r2"):
            handle = await dbos.start_workflow(receiver, None, 1, 5)
        await dbos.send("r2", "first")
        assert await handle.get_result(timeout=5) == ["first"]
        await dbos.send("r2", "second")
    await conn.execute("UPDATE workflow_status SET status = 'PENDING' WHERE workflow_id = 'r2'")
    async with DBOS(database_url=db_url, app_version="test") as dbos:
        assert await (await dbos.retrieve_workflow("r2")).get_result(timeout=5) == ["first"]
    left = await conn.fetch("SELECT payload FROM messages WHERE consumed_at IS NULL")
    assert [r[0] for r in left] == ['"second"']


async def test_a_retried_receive_statement_consumes_nothing_more(
    dbos: DBOS, conn: asyncpg.Connection
) -> None:
    # The statement as it runs again after a lost commit acknowledgement.
    with SetWorkflowID("r3"):
        await (await dbos.start_workflow(receiver, "t", 0, 1)).get_result(timeout=5)
    # Receives are fenced to a PENDING row, as they are while the workflow runs.
    await conn.execute("UPDATE workflow_status SET status = 'PENDING' WHERE workflow_id = 'r3'")
    for m in ("m1", "m2", "m3"):
        await dbos.send("r3", m, topic="t")
    # Once for a recv of the workflow's own sequence, once for one made in a branch.
    for branch, expected in (("", '"m1"'), ("0.1", '"m2"')):
        step = StepRecord("r3", 7, "DBOS.recv", completed_at=0, branch=branch, origin=0)
        assert await msg_table.receive_message(conn, "t", step) == expected
        with pytest.raises(msg_table.AlreadyRecorded):
            await msg_table.receive_message(conn, "t", step)
    unconsumed = await conn.fetchval(
        "SELECT count(*) FROM messages WHERE destination_id = 'r3' AND consumed_at IS NULL"
    )
    assert unconsumed == 1


async def test_send_outside_a_workflow_with_an_idempotency_key(
    dbos: DBOS, conn: asyncpg.Connection
) -> None:
    with SetWorkflowID("r4"):
        handle = await dbos.start_workflow(receiver, None, 2, 0.3)
    for _ in range(3):
        with SetWorkflowID("send-once"):
            await dbos.send("r4", "hello")
    assert await handle.get_result(timeout=5) == ["hello", None]
    assert await conn.fetchval("SELECT count(*) FROM messages") == 1


async def test_bad_sends_raise_clear_errors_and_write_nothing(
    dbos: DBOS, conn: asyncpg.Connection
) -> None:
    with pytest.raises(WorkflowNotFoundError, match="no workflow has this ID"):
        await dbos.send("nobody", "x")
    with pytest.raises(SerializationError):
        await dbos.send("nobody", object())
    with pytest.raises(ValueError, match="topic"):
        await dbos.send("nobody", "x", topic="")
    with pytest.raises(NotInWorkflowError):
        await DBOS.recv()
    with pytest.raises(NotInWorkflowError):
        await DBOS.set_event("k", 1)
    assert await conn.fetchval("SELECT count(*) FROM messages") == 0


async def test_a_1mb_message_and_a_1mb_event(dbos: DBOS) -> None:
    payload = "é" * 500_000 + "x" * 24_288  # > 1 MB of UTF-8
    with SetWorkflowID("r5"):
        handle = await dbos.start_workflow(receiver, None, 1, 5)
    await dbos.send("r5", payload)
    assert await handle.get_result(timeout=5) == [payload]
    with SetWorkflowID("big"):
        await big_event(payload)
    assert await dbos.get_event("big", "big", timeout_seconds=1) == payload


async def test_recv_timeout_is_durable_across_a_restart(db_url: str) -> None:
    async with DBOS(database_url=db_url, app_version="test") as dbos:
        with SetWorkflowID("r6"):
            await dbos.start_workflow(receiver, None, 1, 3)
        began = time.monotonic()
        await started.wait()
        await anyio.sleep(1.5)  # part of the scenario: time passes before the crash
    async with DBOS(database_url=db_url, app_version="test") as dbos:
        relaunched = time.monotonic()
        assert await (await dbos.retrieve_workflow("r6")).get_result(timeout=10) == [None]
    # It ended at its original deadline (about 3 s after it began), not 3 s after relaunch.
    assert time.monotonic() - relaunched < 2.5
    assert time.monotonic() - began >= 2.9


async def test_a_wake_up_survives_the_listener_being_killed(
    db_url: str, conn: asyncpg.Connection
) -> None:
    async with (
        DBOS(database_url=db_url, app_version="test", executor_id="a") as a,
        DBOS(database_url=db_url, app_version="test", executor_id="b") as b,
    ):
        with SetWorkflowID("r7"):
            handle = await a.start_workflow(receiver, None, 1, 60)
        await started.wait()
        # Parked in recv once its deadline is recorded (after a first look found nothing).
        with anyio.fail_after(10):
            while not await conn.fetchval(  # noqa: ASYNC110 - the state is a row, not an event
                "SELECT count(*) FROM operation_outputs "
                "WHERE workflow_id = 'r7' AND function_name = 'DBOS.sleep'"
            ):
                await anyio.sleep(0.005)
        killed = await conn.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE application_name = 'dbos_async listener a' AND datname = current_database()"
        )
        assert killed == 1
        await b.send("r7", "in the gap")  # its NOTIFY may reach nobody
        assert await handle.get_result(timeout=10) == ["in the gap"]
        listener = a._runtime.listener
        with anyio.fail_after(10):
            while listener.reconnects < 1:  # noqa: ASYNC110 - a counter, no event to wait on
                await anyio.sleep(0.01)


async def test_events_latest_value_wins_and_get_event_waits(dbos: DBOS) -> None:
    reader = asyncio.create_task(dbos.get_event("ev1", "progress", timeout_seconds=5))
    with SetWorkflowID("ev1"):
        await event_setter([1, 2, 3])
    assert await reader in (1, 2, 3)
    assert await dbos.get_event("ev1", "progress", timeout_seconds=0) == 3
    assert await dbos.get_all_events("ev1") == {"progress": 3, "k0": 1, "k1": 2, "k2": 3}
    assert await dbos.get_event("ev1", "missing", timeout_seconds=0.05) is None


async def test_get_event_in_a_workflow_records_the_value(
    db_url: str, conn: asyncpg.Connection
) -> None:
    async with DBOS(database_url=db_url, app_version="test") as dbos:
        with SetWorkflowID("ev2"):
            await event_setter([1])
        with SetWorkflowID("reader"):
            assert await event_reader("ev2", "progress", 1) == 1
        with SetWorkflowID("reader-timeout"):
            assert await event_reader("ev2", "never", 0.05) is None
    await conn.execute("UPDATE workflow_events SET value = '99'")
    await conn.execute("UPDATE workflow_status SET status = 'PENDING' WHERE workflow_id = 'reader'")
    async with DBOS(database_url=db_url, app_version="test") as dbos:
        assert await (await dbos.retrieve_workflow("reader")).get_result(timeout=5) == 1


async def test_an_idempotency_key_is_scoped_to_its_destination_and_refuses_another_message(
    dbos: DBOS, conn: asyncpg.Connection
) -> None:
    for wid in ("k1", "k2"):
        with SetWorkflowID(wid):
            await dbos.start_workflow(receiver, None, 1, 5)
    with SetWorkflowID("same-key"):
        await dbos.send("k1", "hello")
    with SetWorkflowID("same-key"):
        await dbos.send("k2", "hello")  # another destination: its own message
    with SetWorkflowID("same-key"):
        await dbos.send("k1", "hello")  # a retry: sends nothing
    with SetWorkflowID("same-key"), pytest.raises(DBOSError, match="same-key"):
        await dbos.send("k1", "something else")
    with SetWorkflowID("same-key"), pytest.raises(DBOSError, match="same-key"):
        await dbos.send("k1", "hello", topic="other")
    counts = await conn.fetch("SELECT destination_id, count(*) FROM messages GROUP BY 1 ORDER BY 1")
    assert [(r[0], r[1]) for r in counts] == [("k1", 1), ("k2", 1)]
