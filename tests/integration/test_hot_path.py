"""SQL round trips on the hot path, counted at the driver.

Every statement asyncpg sends goes through ``Connection._execute`` (with
arguments) or ``Connection.execute`` (without); with the statement cache warm,
each is one round trip.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import asyncpg
import pytest

from dbos_async import DBOS, Queue, SetWorkflowID
from dbos_async.queue import forget_queue
from dbos_async.systemdb.queries import statements as sql_of

SQL = sql_of("dbos_async")  # the schema every test's DBOS uses


@DBOS.step()
async def noop(i: int) -> int:
    return i


@DBOS.workflow()
async def steps(n: int) -> int:
    for i in range(n):
        await noop(i)
    return n


@pytest.fixture
def statements(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    sent: list[str] = []
    original_execute = asyncpg.Connection._execute
    original_plain = asyncpg.Connection.execute

    async def counted_execute(self: Any, query: str, *args: Any, **kwargs: Any) -> Any:
        sent.append(query)
        return await original_execute(self, query, *args, **kwargs)

    async def counted_plain(self: Any, query: str, *args: Any, **kwargs: Any) -> Any:
        if not args:  # with args, execute() goes through _execute
            sent.append(query)
        return await original_plain(self, query, *args, **kwargs)

    monkeypatch.setattr(asyncpg.Connection, "_execute", counted_execute)
    monkeypatch.setattr(asyncpg.Connection, "execute", counted_plain)
    yield sent


def _background(statement: str) -> bool:
    """The runtime's own periodic work (heartbeat, queue claims), not the workflow's."""
    return statement in _BACKGROUND or statement.split()[0] in ("BEGIN", "BEGIN;", "COMMIT;")


_BACKGROUND = {
    SQL[name]
    for name in (
        "upsert_heartbeat",
        "select_lockless_instances",
        "claim_orphaned_workflows",
        "lock_instance",
        "lock_queue",
        "claim_queued_workflows",
        "check_alive",
    )
}


async def test_round_trips_per_start_step_and_completion(dbos: DBOS, statements: list[str]) -> None:
    await steps(3)  # warm the statement caches
    statements.clear()
    with SetWorkflowID("counted-0"):
        await steps(0)
    statements[:] = [s for s in statements if not _background(s)]
    assert len(statements) == 2, statements  # start + completion
    statements.clear()
    with SetWorkflowID("counted-10"):
        await steps(10)
    statements[:] = [s for s in statements if not _background(s)]
    assert len(statements) == 12, statements  # start + one per step + completion


async def per_branch(n: int) -> None:
    for i in range(n):
        await noop(i)


@DBOS.workflow()
async def branched_steps(branches: int, n: int) -> None:
    await asyncio.gather(*(per_branch(n) for _ in range(branches)))


async def test_a_step_in_a_branch_is_one_round_trip_too(dbos: DBOS, statements: list[str]) -> None:
    await branched_steps(2, 2)  # warm the statement caches
    statements.clear()
    with SetWorkflowID("counted-branches"):
        await branched_steps(1, 5)
    statements[:] = [s for s in statements if not _background(s)]
    # start + one per step + completion; creating the branch costs nothing
    assert len(statements) == 7, statements


async def test_recovery_reads_recorded_steps_once(db_url: str, statements: list[str]) -> None:
    async with DBOS(database_url=db_url, app_version="test") as dbos:
        with SetWorkflowID("replayed"):
            await dbos.start_workflow(steps, 20)
            await (await dbos.retrieve_workflow("replayed")).get_result()
    conn = await asyncpg.connect(db_url, server_settings={"search_path": "dbos_async"})
    await conn.execute(
        "UPDATE workflow_status SET status = 'PENDING' WHERE workflow_id = 'replayed'"
    )
    await conn.close()
    statements.clear()
    async with DBOS(database_url=db_url, app_version="test") as dbos:
        await (await dbos.retrieve_workflow("replayed")).get_result()
    step_reads = [s for s in statements if s == SQL["select_steps_page"]]
    step_writes = [s for s in statements if "_outputs" in s and "INSERT INTO" in s]
    assert len(step_reads) == 1 and not step_writes, statements


@pytest.fixture
def sessions(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[int, list[str]]]:
    """Statements sent, per connection (queue loops claim side by side)."""
    sent: dict[int, list[str]] = {}
    original_execute = asyncpg.Connection._execute
    original_plain = asyncpg.Connection.execute

    async def counted_execute(self: Any, query: str, *args: Any, **kwargs: Any) -> Any:
        sent.setdefault(id(self), []).append(query)
        return await original_execute(self, query, *args, **kwargs)

    async def counted_plain(self: Any, query: str, *args: Any, **kwargs: Any) -> Any:
        if not args:
            sent.setdefault(id(self), []).append(query)
        return await original_plain(self, query, *args, **kwargs)

    monkeypatch.setattr(asyncpg.Connection, "_execute", counted_execute)
    monkeypatch.setattr(asyncpg.Connection, "execute", counted_plain)
    yield sent


async def test_round_trips_per_enqueue_and_claim(
    dbos: DBOS, sessions: dict[int, list[str]]
) -> None:
    # Nothing is cleared midway: a claim sent before a clear can still see a
    # row enqueued after it (the server orders them), so every statement counts.
    queue = Queue("hot-path-queue")
    try:
        for i in range(2):
            with SetWorkflowID(f"enqueued-{i}"):
                handle = await queue.enqueue(steps, 0)
            await handle.get_result()
    finally:
        forget_queue("hot-path-queue")
    statements = [s for sent in sessions.values() for s in sent]
    assert statements.count(SQL["enqueue_workflow"]) == 2  # an enqueue: one statement
    # Each claim: BEGIN, lock the queue, count and claim, COMMIT, on one
    # connection. A fresh workflow's (empty) history is not read.
    claims = 0
    for sent in sessions.values():
        for i, statement in enumerate(sent):
            # (A claim at i < 2 was in flight when the counting began: unseen BEGIN.)
            if statement == SQL["claim_queued_workflows"] and i >= 2:
                claims += 1
                assert sent[i - 2].startswith("BEGIN") and sent[i - 1] == SQL["lock_queue"]
                if i + 1 < len(sent):  # else that claim is still in flight
                    assert sent[i + 1].startswith("COMMIT")
    assert claims >= 1
    assert SQL["select_steps_page"] not in statements
