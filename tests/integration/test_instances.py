"""Runtime instances: who owns a PENDING workflow, and when it is taken over (issue 19, item 1).

Processes may share an executor ID ("local" by default). A workflow is taken
over only when the instance that claimed it is gone: deregistered by a clean
shutdown, not heartbeating for the lease, or with its lock free for the
settle period (proven at once when this host can see its process is gone).
Each test here fails if recovery takes workflows by executor ID alone.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Callable

import anyio
import asyncpg
import pytest

from dbos_async import DBOS, SetWorkflowID, registry
from dbos_async import recovery as recovery_module
from dbos_async.clock import now_ms
from dbos_async.fleet import adopt_orphans
from dbos_async.recovery import run_claimed
from dbos_async.runtime import Runtime
from dbos_async.systemdb import executors as executors_table

ran: list[str] = []


@DBOS.workflow()
async def parked(tag: str) -> str:
    ran.append(tag)
    return str(await DBOS.recv("go", timeout_seconds=math.inf))


async def owner_and_fence(conn: asyncpg.Connection, workflow_id: str) -> tuple[str, int]:
    row = await conn.fetchrow(
        "SELECT claimed_by, fence FROM workflow_status WHERE workflow_id = $1", workflow_id
    )
    assert row is not None
    return row["claimed_by"], row["fence"]


async def lock_holder(conn: asyncpg.Connection, runtime: Runtime) -> int | None:
    """The backend holding the runtime's instance lock, if any."""
    pid: int | None = await conn.fetchval(
        "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND objsubid = 1 AND granted"
        " AND (classid::int8 << 32) | objid::int8 = $1",
        runtime.instance.lock_key,
    )
    return pid


@pytest.fixture
async def gone_elsewhere(conn: asyncpg.Connection) -> AsyncIterator[str]:
    """An instance of another host (its process cannot be seen from here) with a
    PENDING ``parked`` workflow it claimed; its lock is free."""
    ran.clear()
    await conn.execute(
        "INSERT INTO instances (instance_id, executor_id, app_name, app_version, hostname,"
        " host_key, pid, lock_key, locked_at, started_at, heartbeat_at, heartbeat_ms)"
        " SELECT 'elsewhere', 'local', 'app', 'test', 'other-host', 'other-kernel/1', 1, 77,"
        "  t, t, t, 10000"
        " FROM (SELECT (extract(epoch FROM clock_timestamp()) * 1000)::int8) AS c(t)"
    )
    await insert_parked(conn, "orphan", "local", "elsewhere")
    yield "orphan"


async def test_a_live_siblings_workflows_stay_with_it(
    db_url: str, conn: asyncpg.Connection
) -> None:
    ran.clear()
    async with DBOS(database_url=db_url, app_version="test") as first:
        with SetWorkflowID("busy"):
            handle = await first.start_workflow(parked, "first")
        before = await owner_and_fence(conn, "busy")
        async with DBOS(database_url=db_url, app_version="test") as second:
            assert first.executor_id == second.executor_id == "local"
            # Its launch recovered nothing; nor does its failover round.
            lockless = await executors_table.select_lockless_instances(
                conn, second._runtime.instance
            )
            assert lockless == []
            assert await adopt_orphans(second._runtime, lockless) == 0
            assert await owner_and_fence(conn, "busy") == before
        await first.send("busy", "done", topic="go")
        assert await handle.get_result(timeout=10) == "done"
    assert ran == ["first"]


async def test_a_clean_shutdown_hands_its_workflows_over_at_once(
    db_url: str, conn: asyncpg.Connection
) -> None:
    ran.clear()
    async with DBOS(database_url=db_url, app_version="test") as first:
        with SetWorkflowID("handed-over"):
            await first.start_workflow(parked, "first")
        first_instance = first._runtime.instance_id
    assert await conn.fetchval("SELECT count(*) FROM instances") == 0  # deregistered
    async with DBOS(database_url=db_url, app_version="test") as second:
        # Recovered by launch itself, not after a settle period or a lease.
        owner, _ = await owner_and_fence(conn, "handed-over")
        assert owner == second._runtime.instance_id != first_instance
        await second.send("handed-over", "done", topic="go")
        handle = await second.retrieve_workflow("handed-over")
        assert await handle.get_result(timeout=10) == "done"
    assert ran == ["first", "first"]  # its replay after the hand-over runs the body again


async def test_a_lockless_instance_elsewhere_is_taken_over_after_the_settle_period(
    db_url: str, conn: asyncpg.Connection, gone_elsewhere: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(recovery_module, "LOCK_SETTLE_SECONDS", 1.0)
    async with DBOS(database_url=db_url, app_version="test") as dbos:
        # Its lock is free, but this host cannot see its process: launch waits.
        assert await owner_and_fence(conn, gone_elsewhere) == ("elsewhere", 0)
        handle = await dbos.retrieve_workflow(gone_elsewhere)
        await dbos.send(gone_elsewhere, "done", topic="go")
        assert await handle.get_result(timeout=20) == "done"
        owner, fence = await owner_and_fence(conn, gone_elsewhere)
        assert (owner, fence) == (dbos._runtime.instance_id, 1)
    assert ran == ["orphan"]


async def test_an_instance_whose_lock_comes_back_keeps_its_workflows(
    db_url: str, conn: asyncpg.Connection, gone_elsewhere: str
) -> None:
    async with DBOS(database_url=db_url, app_version="test", lease_seconds=math.inf) as dbos:
        runtime = dbos._runtime
        [suspect] = await executors_table.select_lockless_instances(conn, runtime.instance)
        assert suspect.instance_id == "elsewhere"

        async def claim() -> list[str]:
            rows = await executors_table.claim_orphaned_workflows(
                conn,
                runtime.instance,
                only_executor=None,
                lease_ms=None,
                suspects=[suspect],
                now_ms=now_ms(),
                limit=10,
                names=[e.name for e in registry.workflows()],
            )
            await run_claimed(runtime, conn, rows)
            return [r["workflow_id"] for r in rows]

        # It reconnected and holds its lock again: alive.
        holder = await asyncpg.connect(db_url)
        try:
            assert await holder.fetchval("SELECT pg_try_advisory_lock(77)")
            await holder.execute(
                "UPDATE dbos_async.instances SET locked_at = locked_at + 1"
                " WHERE instance_id = 'elsewhere'"
            )
            assert await claim() == []
        finally:
            await holder.close()
        # Free again, but it was taken since the suspect was seen (a new
        # locked_at): not proof it is gone; a later round would need to see it
        # free for a whole settle period.
        assert await claim() == []
        assert await owner_and_fence(conn, gone_elsewhere) == ("elsewhere", 0)
        # Seen again, and still free: gone.
        [suspect] = await executors_table.select_lockless_instances(conn, runtime.instance)
        assert await claim() == [gone_elsewhere]
        await dbos.send(gone_elsewhere, "done", topic="go")
        handle = await dbos.retrieve_workflow(gone_elsewhere)
        assert await handle.get_result(timeout=10) == "done"


async def test_a_listener_reconnect_takes_the_lock_again(
    db_url: str, conn: asyncpg.Connection
) -> None:
    async with DBOS(database_url=db_url, app_version="test") as dbos:
        runtime = dbos._runtime
        first = await lock_holder(conn, runtime)
        assert first is not None
        locked_at = await conn.fetchval(
            "SELECT locked_at FROM instances WHERE instance_id = $1", runtime.instance_id
        )
        # The server still thinks an earlier session of the instance alive, and
        # it holds the lock: the new session ends it rather than wait forever.
        stale = await asyncpg.connect(db_url)
        try:
            # Queued behind the listener's session, it gets the lock the moment
            # that session ends, before the listener reconnects.
            waiting = asyncio.ensure_future(
                stale.fetchval("SELECT pg_advisory_lock($1)", runtime.instance.lock_key)
            )
            await _until_waiting(conn, stale.get_server_pid())
            await conn.execute("SELECT pg_terminate_backend($1, 5000)", first)
            await waiting
            await _until(lambda: runtime.listener.reconnects > 0)
            assert not await _alive(conn, stale)
        finally:
            stale.terminate()
        second = await lock_holder(conn, runtime)
        assert second is not None and second != first
        assert (
            await conn.fetchval(
                "SELECT locked_at FROM instances WHERE instance_id = $1", runtime.instance_id
            )
            > locked_at
        )


async def _until_waiting(conn: asyncpg.Connection, pid: int) -> None:
    """Until backend ``pid`` waits for a lock (nothing announces that: look again)."""
    query = "SELECT count(*) FROM pg_locks WHERE pid = $1 AND NOT granted"
    while True:
        if await conn.fetchval(query, pid):
            return
        await asyncio.sleep(0.01)


async def _until(condition: Callable[[], bool]) -> None:
    """Until ``condition()`` holds (a counter of the runtime's: it has no event)."""
    with anyio.fail_after(20):
        while True:
            if condition():
                return
            await asyncio.sleep(0.01)


async def _alive(conn: asyncpg.Connection, other: asyncpg.Connection) -> bool:
    return bool(
        await conn.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE pid = $1", other.get_server_pid()
        )
    )


async def insert_parked(
    conn: asyncpg.Connection, workflow_id: str, executor: str, claimant: str
) -> None:
    """A PENDING ``parked(workflow_id)`` of executor ``executor``, claimed by ``claimant``."""
    await conn.execute(
        "INSERT INTO workflow_status (workflow_id, status, name, inputs, app_name, app_version,"
        " executor_id, created_at, updated_at, branched_steps, claimed_by)"
        " VALUES ($1, 'PENDING', $2, '{\"args\": [\"' || $1 || '\"], \"kwargs\": {}}',"
        " 'app', 'test', $3, 0, 0, true, $4)",
        workflow_id,
        parked.__dbos_entry__.name,  # type: ignore[attr-defined]
        executor,
        claimant,
    )


async def test_a_claimant_of_an_earlier_release_follows_its_rules(
    db_url: str, conn: asyncpg.Connection
) -> None:
    # Claimed by a process of a release before instances (no row names it),
    # whose executor still heartbeats: it may be running it. Taken only once
    # that executor stops heartbeating, as that release would.
    await conn.execute(
        "INSERT INTO executors (executor_id, app_name, app_version, heartbeat_at)"
        " VALUES ('older', 'app', 'test', (extract(epoch FROM clock_timestamp()) * 1000)::int8)"
    )
    await insert_parked(conn, "older-work", "older", "an-older-process")
    async with DBOS(database_url=db_url, app_version="test", executor_id="newer") as dbos:
        assert await adopt_orphans(dbos._runtime, []) == 0
        await conn.execute("UPDATE executors SET heartbeat_at = 0 WHERE executor_id = 'older'")
        assert await adopt_orphans(dbos._runtime, []) == 1
        await dbos.send("older-work", "done", topic="go")
        handle = await dbos.retrieve_workflow("older-work")
        assert await handle.get_result(timeout=10) == "done"


async def test_an_instance_is_judged_by_its_own_heartbeat_period(
    db_url: str, conn: asyncpg.Connection
) -> None:
    # It heartbeats every 100 s (a long lease), last 40 s ago, and holds its
    # lock: alive, though a claimer with a 30 s lease would count it out.
    holder = await asyncpg.connect(db_url)
    try:
        await holder.execute("SELECT pg_advisory_lock(99)")
        await conn.execute(
            "INSERT INTO instances (instance_id, executor_id, app_name, app_version, hostname,"
            " pid, lock_key, started_at, heartbeat_at, heartbeat_ms)"
            " SELECT 'slow', 'local', 'app', 'test', 'h', 1, 99, t, t - 40000, 100000"
            " FROM (SELECT (extract(epoch FROM clock_timestamp()) * 1000)::int8) AS c(t)"
        )
        await insert_parked(conn, "slow-work", "local", "slow")
        async with DBOS(database_url=db_url, app_version="test", lease_seconds=30) as dbos:
            assert await adopt_orphans(dbos._runtime, []) == 0
            # Three of its periods missed: gone, lock or not (a paused process).
            await conn.execute(
                "UPDATE instances SET heartbeat_at = heartbeat_at - 300000"
                " WHERE instance_id = 'slow'"
            )
            assert await adopt_orphans(dbos._runtime, []) == 1
            await dbos.send("slow-work", "done", topic="go")
            handle = await dbos.retrieve_workflow("slow-work")
            assert await handle.get_result(timeout=10) == "done"
    finally:
        await holder.close()
