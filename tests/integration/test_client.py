"""DBOSClient: handles that wait by NOTIFY, every management call, lifecycle and bad input."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from dbos_async import (
    DBOS,
    DatabaseUnavailableError,
    DBOSClient,
    DBOSError,
    Queue,
    QueueDeduplicatedError,
    SerializationError,
    SetWorkflowID,
    WorkflowCancelledError,
    WorkflowNotFoundError,
    WorkflowStatusString,
)
from dbos_async.management import INTERNAL_QUEUE
from dbos_async.queue import forget_queue

calls: list[str] = []
started = asyncio.Event()
release = asyncio.Event()

# At the identifier limit, 1,024 bytes in UTF-8 (Ü, ï, ☃ and 🚀 take 2, 2, 3 and 4).
_PREFIX = 'it\'s "q"; DROP TABLE x; -- 100% $1 Ünï ☃ 🚀 '
HOSTILE = _PREFIX + "z" * (1024 - len(_PREFIX.encode()))


@DBOS.step()
async def note(what: str) -> str:
    calls.append(what)
    return f"{what}#{len(calls)}"


@DBOS.step()
async def hold() -> None:
    started.set()
    await release.wait()


@DBOS.workflow()
async def two_steps(tag: str) -> list[str]:
    return [await note(f"{tag}-a"), await note(f"{tag}-b")]


@DBOS.workflow()
async def held(tag: str) -> str:
    await note(tag)
    await hold()
    return tag.upper()


@DBOS.workflow()
async def fails() -> None:
    raise RuntimeError("broken")


@pytest.fixture(autouse=True)
def _reset() -> None:
    global started, release
    calls.clear()
    started, release = asyncio.Event(), asyncio.Event()


@pytest.fixture
async def client(db_url: str) -> AsyncIterator[DBOSClient]:
    async with DBOSClient(db_url) as c:
        yield c


async def test_client_waits_for_a_workflow_running_elsewhere_by_notify(
    dbos: DBOS, client: DBOSClient
) -> None:
    with SetWorkflowID("held-1"):
        await DBOS.start_workflow(held, "x")
    await started.wait()
    handle = await client.retrieve_workflow("held-1")
    assert (await handle.get_status()).status is WorkflowStatusString.PENDING
    waiter = asyncio.create_task(handle.get_result(timeout=10))  # the safety poll is 30 s
    await asyncio.sleep(0.05)
    assert not waiter.done()
    release.set()
    assert await waiter == "X"


async def test_results_of_unregistered_workflows_decode_as_plain_json(
    client: DBOSClient, conn: asyncpg.Connection
) -> None:
    await conn.execute(
        "INSERT INTO workflow_status (workflow_id, status, name, inputs, output, created_at,"
        " updated_at) VALUES ('other', 'SUCCESS', 'elsewhere.unknown_workflow',"
        ' \'{"args": [1], "kwargs": {}}\', \'{"when": "2024-01-02T03:04:05Z", "n": [1, 2]}\','
        " 1, 2)"
    )
    handle = await client.retrieve_workflow("other")
    assert await handle.get_result() == {"when": "2024-01-02T03:04:05Z", "n": [1, 2]}
    status = await client.get_workflow_status("other")
    assert status is not None and status.input == {"args": [1], "kwargs": {}}


async def test_client_lists_inspects_and_cancels(dbos: DBOS, client: DBOSClient) -> None:
    with SetWorkflowID("w1"):
        await two_steps("a")
    with SetWorkflowID("held-2"):
        running = await DBOS.start_workflow(held, "y")
    await started.wait()
    listed = await client.list_workflows(sort_desc=True)
    assert [s.workflow_id for s in listed] == ["held-2", "w1"]
    assert listed[1].output == ["a-a#1", "a-b#2"]
    assert [s.output for s in await client.list_workflow_steps("w1")] == ["a-a#1", "a-b#2"]
    assert await client.list_queued_workflows() == []
    await client.cancel_workflow("held-2")
    with pytest.raises(WorkflowCancelledError):
        await running.get_result(timeout=10)
    with pytest.raises(WorkflowCancelledError):
        await (await client.retrieve_workflow("held-2")).get_result(timeout=10)


async def _notifications(db_url: str) -> tuple[asyncpg.Connection, list[str]]:
    got: list[str] = []
    listen = await asyncpg.connect(db_url)
    await listen.add_listener("dbos_async", lambda *a: got.append(str(a[3])))
    return listen, got


async def test_client_restart_fork_and_resume_enqueue_on_the_internal_queue(
    client: DBOSClient, db_url: str
) -> None:
    # Seeded by a runtime that then stops: nothing dequeues what the client enqueues.
    async with DBOS(database_url=db_url, app_version="test"):
        with SetWorkflowID("orig"):
            await two_steps("o")
        with SetWorkflowID("broken"), pytest.raises(RuntimeError):
            await fails()
    listen, got = await _notifications(db_url)
    try:
        restarted = await client.restart_workflow("orig")
        forked = await client.fork_workflow("orig", 1, application_version="v9")
        resumed = await client.resume_workflow("broken")
        await listen.fetchval("SELECT 1")  # notifications arrive before the reply
    finally:
        await listen.close()
    # Each enqueued on the internal queue (resume also announces w:broken, for its waiters).
    assert [n for n in got if n.startswith("q:")] == [f"q:{INTERNAL_QUEUE}"] * 3
    for handle, version in ((restarted, "test"), (forked, "v9"), (resumed, "test")):
        status = await handle.get_status()
        assert status.status is WorkflowStatusString.ENQUEUED, handle
        assert status.queue_name == INTERNAL_QUEUE and status.executor_id is None
        assert status.app_version == version
    assert (await restarted.get_status()).forked_from == "orig"
    assert [s.output for s in await client.list_workflow_steps(forked.workflow_id)] == ["o-a#1"]
    assert await client.list_workflow_steps(restarted.workflow_id) == []
    queued = await client.list_queued_workflows(queue_name=INTERNAL_QUEUE)
    assert {s.workflow_id for s in queued} == {
        restarted.workflow_id,
        forked.workflow_id,
        "broken",
    }
    assert calls == ["o-a", "o-b"]  # the client ran nothing


async def test_client_restart_fork_and_resume_run_on_a_runtime(
    dbos: DBOS, client: DBOSClient
) -> None:
    with SetWorkflowID("orig"):
        await two_steps("e")
    with SetWorkflowID("broken"), pytest.raises(RuntimeError):
        await fails()
    restarted = await client.restart_workflow("orig")
    forked = await client.fork_workflow("orig", 1)
    again = await restarted.get_result(timeout=30)  # from scratch: both steps ran again
    assert again[0].startswith("e-a#") and again[0] != "e-a#1" and again[1].startswith("e-b#")
    assert (await forked.get_result(timeout=30))[0] == "e-a#1"  # step 0 copied, not run
    assert calls.count("e-a") == 2 and calls.count("e-b") == 3
    with pytest.raises(RuntimeError):
        await (await client.resume_workflow("broken")).get_result(timeout=30)


async def test_client_deletes(dbos: DBOS, client: DBOSClient) -> None:
    with SetWorkflowID(HOSTILE):
        await two_steps("d")
    assert [s.workflow_id for s in await client.list_workflows(workflow_ids=[HOSTILE])] == [HOSTILE]
    await client.delete_workflow(HOSTILE, delete_children=True)
    assert await client.get_workflow_status(HOSTILE) is None
    assert await DBOS.list_workflows() == []


@pytest.mark.parametrize(
    "call",
    [
        lambda c: c.retrieve_workflow("nope"),
        lambda c: c.list_workflow_steps("nope"),
        lambda c: c.cancel_workflow("nope"),
        lambda c: c.resume_workflow("nope"),
        lambda c: c.restart_workflow("nope"),
        lambda c: c.fork_workflow("nope", 0),
        lambda c: c.delete_workflow("nope"),
    ],
)
async def test_unknown_ids_raise_workflow_not_found(client: DBOSClient, call: Any) -> None:
    with pytest.raises(WorkflowNotFoundError):
        await call(client)


async def test_bad_input(client: DBOSClient) -> None:
    assert await client.get_workflow_status("nope") is None
    with pytest.raises(ValueError, match="start_step"):
        await client.fork_workflow("nope", -1)
    with pytest.raises(ValueError):
        await client.retrieve_workflow("")
    with pytest.raises(ValueError):
        await client.list_workflows(status="FINISHED")


@DBOS.workflow()
async def echo_twice() -> list[object]:
    got = [await DBOS.recv("in", timeout_seconds=5), await DBOS.recv("in", timeout_seconds=0.2)]
    await DBOS.set_event("got", got)
    await DBOS.write_stream("out", got[0])
    return got


async def test_messages_events_and_streams_through_the_client(
    dbos: DBOS, client: DBOSClient
) -> None:
    with SetWorkflowID("echo"):
        handle = await dbos.start_workflow(echo_twice)
    for _ in range(2):  # SetWorkflowID makes the client's send idempotent
        with SetWorkflowID("send-key"):
            await client.send("echo", HOSTILE, topic="in")
    assert await client.get_event("echo", "got", timeout_seconds=5) == [HOSTILE, None]
    assert await handle.get_result(timeout=5) == [HOSTILE, None]
    assert await client.get_all_events("echo") == {"got": [HOSTILE, None]}
    assert [v async for v in client.read_stream("echo", "out")] == [HOSTILE]
    with pytest.raises(WorkflowNotFoundError):
        await client.send("nobody", "hi")


async def test_lifecycle(db_url: str) -> None:
    client = DBOSClient(db_url)
    with pytest.raises(DBOSError, match="new"):
        await client.list_workflows()
    async with client:
        handle = await client.restart_workflow(await _seed(client))
    assert "closed" in repr(client)
    with pytest.raises(DBOSError, match="closed"):
        await client.list_workflows()
    with pytest.raises(DBOSError, match="closed"):
        await handle.get_status()
    with pytest.raises(DBOSError, match="already used"):
        async with client:
            pass
    with pytest.raises(ValueError):
        DBOSClient(db_url, schema="Robert'); DROP")
    with pytest.raises(ValueError):
        DBOSClient("")


async def _seed(client: DBOSClient) -> str:
    async with client.connection() as conn:
        await conn.execute(
            "INSERT INTO workflow_status (workflow_id, status, name, created_at, updated_at)"
            " VALUES ('seed', 'SUCCESS', 'n', 1, 1)"
        )
    return "seed"


async def test_errors_raised_inside_the_block_come_out_unchanged(db_url: str) -> None:
    with pytest.raises(WorkflowNotFoundError):
        async with DBOSClient(db_url) as client:
            await client.retrieve_workflow("nope")


async def test_unreachable_or_unmigrated_databases_say_so(pg_server_url: str) -> None:
    with pytest.raises(DatabaseUnavailableError):
        async with DBOSClient("postgresql://postgres@127.0.0.1:1/none"):
            pass
    with pytest.raises(DatabaseUnavailableError, match="DSN"):
        async with DBOSClient("mysql://nobody@nowhere/db"):
            pass
    name = f"c_empty_{os.getpid()}"
    admin = await asyncpg.connect(pg_server_url)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}"')
        await admin.execute(f'CREATE DATABASE "{name}"')
        url = pg_server_url.rsplit("/", 1)[0] + f"/{name}"
        with pytest.raises(DBOSError, match="dbos-async migrate"):
            async with DBOSClient(url):
                pass
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


async def test_client_enqueue_by_name_runs_on_a_runtime(dbos: DBOS, client: DBOSClient) -> None:
    name = "client-jobs"
    Queue(name)
    try:
        handle = await client.enqueue(
            "q",
            queue_name=name,
            workflow_name=_name_of(two_steps),
            workflow_id="enq-1",
            deduplication_id="d1",
        )
        assert await handle.get_result(timeout=10) == ["q-a#1", "q-b#2"]
        again = await client.enqueue(
            "other", queue_name=name, workflow_name=_name_of(two_steps), workflow_id="enq-1"
        )
        assert await again.get_result(timeout=10) == ["q-a#1", "q-b#2"]  # idempotent by ID
        with SetWorkflowID("enq-2"):
            parked = await client.enqueue(
                "p",
                queue_name="nobody-serves-this",
                workflow_name=_name_of(two_steps),
                deduplication_id="d2",
            )
        assert parked.workflow_id == "enq-2"
        with pytest.raises(QueueDeduplicatedError):
            await client.enqueue(
                "p",
                queue_name="nobody-serves-this",
                workflow_name=_name_of(two_steps),
                deduplication_id="d2",
            )
        with pytest.raises(SerializationError):
            await client.enqueue(object(), queue_name=name, workflow_name=_name_of(two_steps))
    finally:
        forget_queue(name)


def _name_of(fn: Any) -> str:
    return str(fn.__dbos_entry__.name)


async def test_a_client_refuses_a_schema_an_older_release_migrated(
    db_url: str, conn: asyncpg.Connection
) -> None:
    # Its statements name columns the missing migrations add: refused at once, clearly.
    await conn.execute("DELETE FROM schema_migrations WHERE version = 11")
    with pytest.raises(DBOSError, match=r"lacks migrations \[11\].*dbos-async migrate"):
        async with DBOSClient(db_url):
            pass
