"""Recovery and claims: a row that cannot run is recorded as failed, and the others run."""

from __future__ import annotations

import asyncio
import math

import asyncpg
import pytest

from dbos_async import DBOS, Queue, SetWorkflowID, WorkflowStatusString
from dbos_async.queue import forget_queue


@DBOS.workflow()
async def echo(x: int) -> int:
    return x


POISON = [
    "{not json",  # malformed JSON
    '["args", 1]',  # JSON, but not the {"args": [...], "kwargs": {...}} record
    '{"args": "oops", "kwargs": []}',  # the record's parts of the wrong shape
]


async def insert(conn: asyncpg.Connection, workflow_id: str, inputs: str, **cols: str) -> None:
    await conn.execute(
        "INSERT INTO workflow_status (workflow_id, status, name, inputs, app_version,"
        " executor_id, queue_name, enqueue_seq, created_at, updated_at)"
        " VALUES ($1, $2, $3, $4, 'test', $5, $6,"
        "  CASE WHEN $6::text IS NULL THEN NULL ELSE nextval('workflow_enqueue_seq') END, 1, 1)",
        workflow_id,
        cols.get("status", "PENDING"),
        echo.__dbos_entry__.name,  # type: ignore[attr-defined]
        inputs,
        cols.get("executor_id"),
        cols.get("queue_name"),
    )


async def test_poison_inputs_fail_their_workflow_and_recovery_runs_the_rest(
    db_url: str, conn: asyncpg.Connection
) -> None:
    for i, inputs in enumerate(POISON):
        await insert(conn, f"poison-{i}", inputs, executor_id="local")
    await insert(conn, "healthy", '{"args": [7], "kwargs": {}}', executor_id="local")
    async with DBOS(database_url=db_url, app_version="test") as dbos:  # launch must not fail
        assert await (await dbos.retrieve_workflow("healthy")).get_result(timeout=10) == 7
        for i in range(len(POISON)):
            status = await dbos.get_workflow_status(f"poison-{i}")
            assert status is not None and status.status is WorkflowStatusString.ERROR
            assert "inputs" in str(status.error), status.error
    # A second launch finds nothing left to recover, and counts no attempt on anything.
    attempts = await conn.fetchval("SELECT max(recovery_attempts) FROM workflow_status")
    async with DBOS(database_url=db_url, app_version="test"):
        pass
    assert await conn.fetchval("SELECT max(recovery_attempts) FROM workflow_status") == attempts


async def test_a_poison_row_in_a_queue_claim_fails_alone(
    dbos: DBOS, conn: asyncpg.Connection
) -> None:
    queue = Queue("poison-queue")
    try:
        await insert(conn, "q-poison", POISON[0], status="ENQUEUED", queue_name="poison-queue")
        for i in range(3):
            await insert(
                conn,
                f"q-ok-{i}",
                f'{{"args": [{i}], "kwargs": {{}}}}',
                status="ENQUEUED",
                queue_name="poison-queue",
            )
        await conn.execute("SELECT pg_notify(current_schema(), 'q:poison-queue')")
        for i in range(3):
            handle = await dbos.retrieve_workflow(f"q-ok-{i}")
            assert await handle.get_result(timeout=10) == i
        with pytest.raises(Exception, match="inputs"):
            await (await dbos.retrieve_workflow("q-poison")).get_result(timeout=10)
    finally:
        forget_queue(queue.name)


@DBOS.workflow()
async def waits_forever() -> object:
    await DBOS.sleep(0)
    return await DBOS.recv("forever", timeout_seconds=math.inf)


async def test_an_infinite_recv_timeout_survives_a_restart(db_url: str) -> None:
    async with DBOS(database_url=db_url, app_version="test") as dbos:
        with SetWorkflowID("forever"):
            await dbos.start_workflow(waits_forever)
        # The sleep, then the recv's deadline (there is none), written in the background.
        steps = []
        while len(steps) < 2:
            steps = await dbos.list_workflow_steps("forever")
            await asyncio.sleep(0.01)
    async with DBOS(database_url=db_url, app_version="test") as dbos:  # recovers it
        await dbos.send("forever", "at last", topic="forever")
        handle = await dbos.retrieve_workflow("forever")
        assert await handle.get_result(timeout=10) == "at last"
