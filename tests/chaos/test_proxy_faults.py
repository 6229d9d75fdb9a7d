"""A runtime behind a misbehaving network: held bytes, cut connections, lost replies.

The runtime talks to Postgres through the proxy; the step bodies and the
test's own reads go straight to the server. A lost reply is the hard case:
the statement did commit, and the runtime cannot know it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest
from ledger import Observer, describe, four_steps, problems, until, work
from proxy import PostgresProxy, Reply

from dbos_async import DBOS, Queue, SetWorkflowID, WorkflowHandle

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(120)]

proxy_queue = Queue("chaos_proxy", concurrency=2)


@DBOS.workflow()
async def queued_once(i: int) -> int:
    return int((await work("q", i))["v"]) * 2


@pytest.fixture
async def dbos(proxy: PostgresProxy, app_db_url: str) -> AsyncIterator[DBOS]:
    """A runtime whose every connection (pool, listener, transactions) goes through the proxy."""
    async with DBOS(database_url=proxy.url(app_db_url), app_version="chaos") as runtime:
        yield runtime


async def start_many(dbos: DBOS, count: int, hold: float) -> dict[str, WorkflowHandle[Any]]:
    handles = {}
    for i in range(count):
        with SetWorkflowID(f"wf-{i}"):
            handles[f"wf-{i}"] = await dbos.start_workflow(four_steps, i, hold)
    return handles


async def results(handles: dict[str, WorkflowHandle[Any]]) -> dict[str, Any]:
    return {wid: await h.get_result(timeout=30) for wid, h in handles.items()}


async def ledger_rows(ledger: Observer) -> int:
    return int(await ledger.fetchval("SELECT count(*) FROM public.ledger"))


async def test_workflows_finish_after_a_blackhole(
    dbos: DBOS, proxy: PostgresProxy, ledger: Observer
) -> None:
    handles = await start_many(dbos, 40, hold=0.05)
    await until(lambda: _at_least(ledger, 20), "some steps ran")
    proxy.blackhole()
    await anyio.sleep(3)  # the outage itself: nothing goes through for 3 s
    proxy.restore()
    assert await results(handles) == {f"wf-{i}": i + 6 for i in range(40)}
    assert await problems(ledger) == []


async def test_workflows_finish_while_connections_are_cut_again_and_again(
    dbos: DBOS, proxy: PostgresProxy, ledger: Observer
) -> None:
    handles = await start_many(dbos, 60, hold=0.02)
    cut = 0
    for _ in range(15):  # about 1.5 s of cuts, every 100 ms
        cut += proxy.cut()
        await anyio.sleep(0.1)
    assert cut >= 15
    print(f"connections cut: {cut}, workflows: 60")
    assert await results(handles) == {f"wf-{i}": i + 6 for i in range(60)}
    assert await problems(ledger) == []


async def test_a_transaction_whose_commit_reply_is_lost_commits_once(
    dbos: DBOS, proxy: PostgresProxy, ledger: Observer
) -> None:
    dropped = proxy.drop_next_commit_reply(containing="public.ledger")
    with SetWorkflowID("txn-lost-reply"):
        handle = await dbos.start_workflow(four_steps, 1)
    assert (await settled(dropped)).tag == "COMMIT"
    assert await handle.get_result(timeout=30) == 7
    assert await problems(ledger) == []


async def test_a_step_checkpoint_whose_reply_is_lost_is_not_run_again(
    dbos: DBOS, proxy: PostgresProxy, ledger: Observer
) -> None:
    dropped = proxy.drop_next_reply(
        lambda r: r.tag.startswith("INSERT") and "operation_outputs" in r.sql
    )
    with SetWorkflowID("step-lost-reply"):
        handle = await dbos.start_workflow(four_steps, 1)
    await settled(dropped)
    assert await handle.get_result(timeout=30) == 7
    assert await problems(ledger) == []


async def test_a_completion_whose_reply_is_lost_is_reported_from_its_row(
    dbos: DBOS, proxy: PostgresProxy, ledger: Observer
) -> None:
    dropped = proxy.drop_next_reply(lambda r: "SET status = $2, output = $3" in r.sql)
    with SetWorkflowID("completion-lost-reply"):
        handle = await dbos.start_workflow(four_steps, 1)
    await settled(dropped)
    assert await handle.get_result(timeout=30) == 7
    assert await problems(ledger) == []


def _starts(reply: Reply) -> bool:
    return reply.tag == "INSERT 0 1" and "INSERT INTO dbos_async.workflow_status" in reply.sql


async def test_a_start_whose_reply_is_lost_still_runs(
    dbos: DBOS, proxy: PostgresProxy, ledger: Observer
) -> None:
    dropped = proxy.drop_next_reply(_starts)
    with SetWorkflowID("start-lost-reply"):
        handle = await dbos.start_workflow(four_steps, 1)
    await settled(dropped)
    try:
        assert await handle.get_result(timeout=10) == 7
    finally:
        print(*await describe(ledger, ["start-lost-reply"]), "local:", list(dbos._runtime.local))
    assert await problems(ledger) == []


async def test_a_queue_claim_whose_commit_reply_is_lost_still_runs(
    dbos: DBOS, proxy: PostgresProxy, ledger: Observer
) -> None:
    # The COMMIT of a claim that took one of them (not of an empty claim).
    dropped = proxy.drop_next_reply(
        lambda r: (
            r.tag == "COMMIT"
            and any("pg_advisory_xact_lock" in sql for sql in r.transaction)
            and any(b"claimed-" in row for row in r.rows)
        )
    )
    handles = []
    for i in range(2):
        with SetWorkflowID(f"claimed-{i}"):
            handles.append(await proxy_queue.enqueue(queued_once, i))
    await settled(dropped)
    try:
        assert [await h.get_result(timeout=10) for h in handles] == [0, 2]
    finally:
        print(*await describe(ledger, ["claimed-0", "claimed-1"]), sep="\n")
    assert await problems(ledger) == []


async def settled(dropped: asyncio.Future[Reply]) -> Reply:
    """The dropped reply; bounded, so a statement that never ran fails the test."""
    with anyio.fail_after(20):
        return await dropped


async def _at_least(ledger: Observer, rows: int) -> bool:
    return await ledger_rows(ledger) >= rows
