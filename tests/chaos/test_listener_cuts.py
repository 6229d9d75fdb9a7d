"""Cancellations while the runtime's LISTEN connection is terminated again and again.

A cancel made in the runtime's own process stops the workflow before it
returns; one made elsewhere (a ``DBOSClient``) reaches the runtime through a
notification that the cut listener may never deliver, so the row decides:
the step that was running (or starting) when the cancel committed is the
last one to run, and its checkpoint is refused.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import anyio
import asyncpg
import pytest
from ledger import Observer, problems, until, work

from dbos_async import DBOS, DBOSClient, SetWorkflowID, WorkflowCancelledError, WorkflowHandle

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(120)]

WORKFLOWS, STEPS, HOLD = 30, 8, 0.1


@DBOS.workflow()
async def steps_in_a_row(i: int) -> int:
    total = 0
    for n in range(STEPS):
        total += int((await work(f"s{n}", n, HOLD))["v"])
    return total + i


@contextlib.asynccontextmanager
async def listener_cuts(db_url: str) -> AsyncIterator[list[int]]:
    """Terminate every dbos_async listener backend of the database every 20 ms."""
    killed = [0]
    conn = await asyncpg.connect(db_url)

    async def cut() -> None:
        while True:
            killed[0] += await conn.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE application_name LIKE 'dbos_async listener%' "
                "AND datname = current_database()"
            )
            await anyio.sleep(0.02)

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(cut)
            yield killed
            tg.cancel_scope.cancel()
    finally:
        await conn.close()


async def db_now(observer: Observer) -> Any:
    return await observer.fetchval("SELECT clock_timestamp()")


async def test_cancels_stop_workflows_while_the_listener_is_cut(
    app_db_url: str, ledger: Observer
) -> None:
    handles: dict[str, WorkflowHandle[Any]] = {}
    cancelled_at: dict[str, Any] = {}
    async with (
        DBOS(database_url=app_db_url, app_version="chaos") as dbos,
        DBOSClient(app_db_url) as client,
    ):
        for i in range(WORKFLOWS):
            with SetWorkflowID(f"wf-{i}"):
                handles[f"wf-{i}"] = await dbos.start_workflow(steps_in_a_row, i)

        async def mid_flight() -> bool:
            rows = await ledger.fetchval("SELECT count(*) FROM public.ledger")
            return bool(rows >= 2 * WORKFLOWS)

        await until(mid_flight, "every workflow ran two steps")
        async with listener_cuts(app_db_url) as killed:
            for i in range(0, WORKFLOWS, 2):
                wid = f"wf-{i}"
                if i % 4 == 0:
                    await dbos.cancel_workflow(wid)  # in-process: stops before it returns
                else:
                    await client.cancel_workflow(wid)  # elsewhere: the row decides
                cancelled_at[wid] = await db_now(ledger)
            results = {}
            for wid, handle in handles.items():
                try:
                    results[wid] = await handle.get_result(timeout=30)
                except WorkflowCancelledError:
                    results[wid] = "cancelled"
    assert killed[0] > 0
    assert results == {
        f"wf-{i}": "cancelled" if i % 2 == 0 else sum(range(STEPS)) + i for i in range(WORKFLOWS)
    }
    late: dict[str, int] = {}
    for wid, at in cancelled_at.items():
        late[wid] = await ledger.fetchval(
            "SELECT count(*) FROM public.ledger WHERE workflow_id = $1 AND at > $2", wid, at
        )
    in_process = {f"wf-{i}" for i in range(0, WORKFLOWS, 4)}
    assert {w: n for w, n in late.items() if w in in_process and n} == {}
    # Elsewhere: at most the one step that started before the runtime could know.
    assert {w: n for w, n in late.items() if n > 1} == {}
    statuses = await ledger.fetch(
        "SELECT workflow_id FROM dbos_async.workflow_status WHERE status = 'CANCELLED'"
    )
    assert {r[0] for r in statuses} == set(cancelled_at)
    assert await problems(ledger, [f"wf-{i}" for i in range(1, WORKFLOWS, 2)]) == []
    print(f"listener backends terminated: {killed[0]}")
