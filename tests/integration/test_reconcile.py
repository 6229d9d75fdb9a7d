"""No workflow stays PENDING on a live runtime that does not run it (issue 20, A.2).

A claim whose reply is lost after it committed leaves its rows PENDING under
this executor with nobody running them. The fault is injected right after the
claim's transaction committed and before its workflows start: the database is
then exactly as a lost COMMIT acknowledgement leaves it. (The TCP proxy of
``tests/chaos`` drops a real COMMIT reply.)
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from dbos_async import (
    DBOS,
    DatabaseUnavailableError,
    Queue,
    SetWorkflowID,
    management,
    queue_worker,
    registry,
    serialization,
)
from dbos_async.queue import forget_queue
from dbos_async.runtime import Runtime
from dbos_async.systemdb import workflows as wf_table

# What the step bodies did: the ledger the assertions read.
ran: list[str] = []
gate: dict[str, asyncio.Event] = {}


@pytest.fixture(autouse=True)
async def _reset() -> AsyncIterator[None]:
    ran.clear()
    gate["release"] = asyncio.Event()  # of this test's loop
    yield


@DBOS.step()
async def record(name: str) -> str:
    ran.append(name)
    return name


@DBOS.workflow()
async def task(name: str) -> str:
    return await record(name)


@DBOS.workflow()
async def waits(name: str) -> str:
    await gate["release"].wait()
    return await record(name)


TASK = f"{__name__}.task"


@pytest.fixture
async def queue() -> AsyncIterator[Queue]:
    name = f"reconciled-{uuid.uuid4().hex[:8]}"
    yield Queue(name, concurrency=1)
    forget_queue(name)


def lose_replies(monkeypatch: pytest.MonkeyPatch, module: Any, times: int = 1) -> list[list[str]]:
    """Make ``module.run_claimed`` fail ``times`` times, after the claim committed."""
    lost: list[list[str]] = []
    original = module.run_claimed

    async def run_claimed(runtime: Runtime, conn: Any, rows: Any, *how: Any) -> int:
        if len(lost) < times:
            lost.append([r["workflow_id"] for r in rows])
            raise DatabaseUnavailableError("Lost the database connection: (injected)")
        return int(await original(runtime, conn, rows, *how))

    monkeypatch.setattr(module, "run_claimed", run_claimed)
    return lost


def quick(dbos: DBOS) -> None:
    dbos._runtime.reconciler.settle_seconds = 0.1


async def insert_stranded(
    conn: Any, runtime: Runtime, workflow_id: str, name: str, inputs: str, fence: int = 0
) -> Any:
    """A PENDING row claimed by ``runtime`` that nothing runs: what a lost reply leaves."""
    return await conn.fetchrow(
        "INSERT INTO dbos_async.workflow_status (workflow_id, status, name, inputs, app_name,"
        " app_version, executor_id, created_at, updated_at, branched_steps, claimed_by, fence)"
        " VALUES ($1, 'PENDING', $2, $3, $4, $5, $6, 0, 0, true, $7, $8)"
        " RETURNING workflow_id, name, inputs, fence",
        workflow_id,
        name,
        inputs,
        runtime.app_name,
        runtime.app_version,
        runtime.executor_id,
        runtime.instance_id,
        fence,
    )


async def test_a_queue_claim_whose_reply_is_lost_still_runs_and_frees_its_slot(
    dbos: DBOS, queue: Queue, monkeypatch: pytest.MonkeyPatch
) -> None:
    quick(dbos)
    lost = lose_replies(monkeypatch, queue_worker)
    handles = []
    for i in range(3):
        with SetWorkflowID(f"queued-{i}"):
            handles.append(await queue.enqueue(task, f"queued-{i}"))
    # The first claim's workflow holds the queue's only slot until it runs.
    results = [await h.get_result(timeout=20) for h in handles]
    assert lost == [["queued-0"]]
    assert results == ["queued-0", "queued-1", "queued-2"]
    assert sorted(ran) == ["queued-0", "queued-1", "queued-2"]  # each step once


async def test_a_resume_whose_reply_is_lost_still_runs(
    dbos: DBOS, monkeypatch: pytest.MonkeyPatch
) -> None:
    quick(dbos)
    with SetWorkflowID("resumed"):
        handle = await dbos.start_workflow(waits, "resumed")
    await dbos.cancel_workflow("resumed")
    gate["release"].set()
    lose_replies(monkeypatch, management)
    with pytest.raises(DatabaseUnavailableError):
        await dbos.resume_workflow("resumed")
    assert await handle.get_result(timeout=20) == "resumed"
    assert ran == ["resumed"]


async def test_a_fork_whose_reply_is_lost_still_runs(
    dbos: DBOS, monkeypatch: pytest.MonkeyPatch
) -> None:
    quick(dbos)
    with SetWorkflowID("original"):
        assert await task("original") == "original"
    lose_replies(monkeypatch, management)
    with SetWorkflowID("forked"), pytest.raises(DatabaseUnavailableError):
        await dbos.fork_workflow("original", 0)
    handle = await dbos.retrieve_workflow("forked")
    assert await handle.get_result(timeout=20) == "original"
    assert ran == ["original", "original"]  # the fork ran its step again, once


async def test_the_periodic_net_runs_what_no_error_reported(db_url: str) -> None:
    # A claim's reply can be lost without any caller seeing an error of ours
    # (a client's process died); the period alone must bring it back.
    assert registry.lookup(TASK) is not None
    async with DBOS(database_url=db_url, app_version="test", lease_seconds=0.6) as dbos:
        quick(dbos)
        runtime = dbos._runtime
        async with runtime.connection() as conn:
            inputs = serialization.encode_inputs(("stranded",), {}, TASK)
            await insert_stranded(conn, runtime, "stranded", TASK, inputs)
        handle = await dbos.retrieve_workflow("stranded")
        assert await handle.get_result(timeout=20) == "stranded"
    assert ran == ["stranded"]


async def test_a_sibling_process_under_the_same_executor_id_keeps_its_workflows(
    db_url: str,
) -> None:
    # Two runtimes share the default executor ID (two workers of one app):
    # each reconciles only its own claims, never the other's running ones.
    async with (
        DBOS(database_url=db_url, app_version="test") as first,
        DBOS(database_url=db_url, app_version="test") as second,
    ):
        assert first._runtime.executor_id == second._runtime.executor_id
        quick(second)
        with SetWorkflowID("busy-in-first"):
            handle = await first.start_workflow(waits, "busy-in-first")
        assert await second._runtime.reconciler.reconcile() == 0
        status = await handle.get_status()
        gate["release"].set()
        assert await handle.get_result(timeout=20) == "busy-in-first"
    assert ran == ["busy-in-first"]
    assert status.status == "PENDING"


async def test_a_start_whose_reply_is_lost_runs_at_once(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The insert commits, its reply is lost, the writer sends it again and
    # finds the row: its own, not an earlier execution's to wait for.
    original = wf_table.insert_workflows
    lost: list[str] = []

    async def reply_lost_once(conn: Any, rows: Any) -> Any:
        result = await original(conn, rows)
        if not lost:
            lost.extend(r.workflow_id for r in rows)
            raise asyncpg.ConnectionDoesNotExistError("connection lost (injected)")
        return result

    monkeypatch.setattr(wf_table, "insert_workflows", reply_lost_once)
    # A long lease: the reconciler's period does not come round during the test.
    async with DBOS(database_url=db_url, app_version="test", lease_seconds=600) as dbos:
        with SetWorkflowID("start-lost"):
            handle = await dbos.start_workflow(task, "start-lost")
        assert await handle.get_result(timeout=10) == "start-lost"
    assert lost == ["start-lost"]
    assert ran == ["start-lost"]


async def test_a_stranded_workflow_not_registered_here_is_left_alone(dbos: DBOS) -> None:
    quick(dbos)
    runtime = dbos._runtime
    async with runtime.connection() as conn:
        await insert_stranded(conn, runtime, "unknown", "elsewhere.only", "{}")
        # Not claimed again and again (each round would bump its fence and log).
        assert await runtime.reconciler.reconcile() == 0
        assert (
            await conn.fetchval(
                "SELECT fence FROM dbos_async.workflow_status WHERE workflow_id = 'unknown'"
            )
            == 0
        )


async def test_a_claim_slow_to_start_its_workflows_is_not_taken_for_a_lost_one(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dbos_async.recovery import run_claimed
    from dbos_async.systemdb import steps as steps_table

    reading = asyncio.Event()
    release = asyncio.Event()
    original = steps_table.select_steps_paged

    async def slow(conn: Any, ids: Any, page: Any = None) -> Any:
        reading.set()
        await release.wait()  # a long history, read page after page
        async for item in original(conn, ids, page):
            yield item

    monkeypatch.setattr(steps_table, "select_steps_paged", slow)
    async with DBOS(database_url=db_url, app_version="test", lease_seconds=600) as dbos:
        quick(dbos)
        runtime = dbos._runtime
        async with runtime.connection() as conn:
            inputs = serialization.encode_inputs(("slow-start",), {}, TASK)
            row = await insert_stranded(conn, runtime, "slow-start", TASK, inputs, fence=1)
            starting = asyncio.ensure_future(run_claimed(runtime, conn, [dict(row)]))
            await reading.wait()
            reconciling = asyncio.ensure_future(runtime.reconciler.reconcile())
            await asyncio.sleep(0.3)  # part of the scenario: longer than the settle delay
            release.set()
            assert await starting == 1
        assert await reconciling == 0
        handle = await dbos.retrieve_workflow("slow-start")
        assert await handle.get_result(timeout=10) == "slow-start"
    assert ran == ["slow-start"]
