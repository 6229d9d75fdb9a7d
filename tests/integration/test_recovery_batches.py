"""Recovery in bounded batches, and records dropped once replayed (issue 20, A.15).

Launch claims and starts one batch of PENDING workflows; the rest are
recovered in the background, a batch at a time, each claimed exactly once. A
running workflow keeps a recorded step only until replay has handed it out.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import AsyncIterator, Iterator

import asyncpg
import pytest

from dbos_async import DBOS, SetWorkflowID, WorkflowStatusString
from dbos_async import recovery as recovery_module
from dbos_async.runtime import Runtime, active_runtime

ROWS = 3_000
LAUNCH_GUARD_SECONDS = 30.0
"""Only a guard against a launch that waits for the whole recovery (it would wait forever)."""

ledger: list[int] = []


@DBOS.workflow()
async def ledgered(i: int) -> int:
    ledger.append(i)
    return i


@DBOS.workflow()
async def parked() -> object:
    return await DBOS.recv("wake", timeout_seconds=math.inf)


def batch_size() -> int:
    return int(getattr(recovery_module, "RECOVERY_BATCH", 500))


async def insert_pending(conn: asyncpg.Connection, n: int) -> None:
    """``n`` PENDING rows of ``ledgered`` under executor "local", created at 0..n-1."""
    await conn.execute(
        "INSERT INTO workflow_status (workflow_id, status, name, inputs, app_version,"
        " executor_id, created_at, updated_at)"
        " SELECT 'batch-' || i, 'PENDING', $1, '{\"args\": [' || i || '], \"kwargs\": {}}',"
        "  'test', 'local', i, i FROM generate_series(0, $2 - 1) AS i",
        ledgered.__dbos_entry__.name,  # type: ignore[attr-defined]
        n,
    )


@pytest.fixture
async def locker(db_url: str) -> AsyncIterator[asyncpg.Connection]:
    """A connection that holds the rows after the first batch locked until it rolls back.

    A claim that reaches them waits: so when launch returns, only what launch
    itself claimed is claimed, whatever the timing.
    """
    c = await asyncpg.connect(db_url, server_settings={"search_path": "dbos_async"})
    try:
        yield c
    finally:
        if c.is_in_transaction():
            await c.execute("ROLLBACK")
        await c.close()


async def lock_after_first_batch(locker: asyncpg.Connection) -> None:
    await locker.execute("BEGIN")
    await locker.execute(
        "SELECT 1 FROM workflow_status WHERE created_at >= $1 FOR UPDATE", batch_size()
    )


async def launch_while_locked(dbos: DBOS, locker: asyncpg.Connection) -> None:
    """Launch; fail (releasing the lock) if launch waits for the locked rows."""
    launching = asyncio.ensure_future(dbos.launch())
    done, _ = await asyncio.wait({launching}, timeout=LAUNCH_GUARD_SECONDS)
    if not done:
        await locker.execute("ROLLBACK")  # let it finish, so the runtime stops cleanly
        await launching
        await dbos.shutdown()
        pytest.fail("launch() waited for PENDING rows beyond its first batch")
    launching.result()


async def wait_for_status(conn: asyncpg.Connection, status: str, n: int) -> None:
    query = "SELECT count(*) FROM workflow_status WHERE status = $1"
    found = await conn.fetchval(query, status)
    while found < n:
        await asyncio.sleep(0.05)
        found = await conn.fetchval(query, status)


async def claimed_by(conn: asyncpg.Connection, runtime: Runtime) -> int:
    count: int = await conn.fetchval(
        "SELECT count(*) FROM workflow_status WHERE claimed_by = $1", runtime.instance_id
    )
    return count


async def test_launch_starts_one_batch_and_the_rest_recover_once_each(
    db_url: str, conn: asyncpg.Connection, locker: asyncpg.Connection
) -> None:
    ledger.clear()
    await insert_pending(conn, ROWS)
    await lock_after_first_batch(locker)
    dbos = DBOS(database_url=db_url, app_version="test")
    await launch_while_locked(dbos, locker)
    try:
        at_launch = await claimed_by(conn, dbos._runtime)
        attempted = await conn.fetchval(
            "SELECT count(*) FROM workflow_status WHERE recovery_attempts > 0"
        )
        print(f"claimed when launch returned: {at_launch} (attempts counted: {attempted})")
        assert 0 < at_launch <= batch_size()
        assert attempted == at_launch
        await locker.execute("ROLLBACK")  # the background batches go on
        await wait_for_status(conn, "SUCCESS", ROWS)
        assert sorted(ledger) == list(range(ROWS))  # each exactly once
        attempts = await conn.fetch(
            "SELECT recovery_attempts, count(*) FROM workflow_status GROUP BY 1"
        )
        assert [tuple(r) for r in attempts] == [(1, ROWS)]  # claimed once each
        assert await claimed_by(conn, dbos._runtime) == ROWS
    finally:
        await dbos.shutdown()


async def test_a_later_batch_leaves_workflows_started_after_launch_alone(
    db_url: str, conn: asyncpg.Connection, locker: asyncpg.Connection
) -> None:
    ledger.clear()
    await insert_pending(conn, ROWS)
    await lock_after_first_batch(locker)
    dbos = DBOS(database_url=db_url, app_version="test")
    await launch_while_locked(dbos, locker)
    try:
        # PENDING under this executor and app version, like the recovered
        # rows, and created after them: the last batch reaches it.
        with SetWorkflowID("started-after-launch"):
            handle = await dbos.start_workflow(parked)
        fence = await conn.fetchval(
            "SELECT fence FROM workflow_status WHERE workflow_id = 'started-after-launch'"
        )
        await locker.execute("ROLLBACK")
        await wait_for_status(conn, "SUCCESS", ROWS)
        row = await conn.fetchrow(
            "SELECT status, fence, recovery_attempts FROM workflow_status"
            " WHERE workflow_id = 'started-after-launch'"
        )
        assert row is not None and tuple(row) == ("PENDING", fence, 0)  # never claimed by recovery
        await dbos.send("started-after-launch", "now", topic="wake")
        assert await handle.get_result(timeout=10) == "now"
        assert sorted(ledger) == list(range(ROWS))
    finally:
        await dbos.shutdown()


@contextlib.contextmanager
def recovery_done() -> Iterator[asyncio.Event]:
    """An event set once the background recovery has found nothing left to claim."""
    seen = asyncio.Event()

    class Handler(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if getattr(record, "action", None) == "recovered":
                seen.set()

    log = logging.getLogger("dbos_async.recovery")
    handler, level = Handler(), log.level
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        yield seen
    finally:
        log.removeHandler(handler)
        log.setLevel(level)


async def test_rows_claimed_elsewhere_since_the_first_batch_stay_there(
    db_url: str, conn: asyncpg.Connection, locker: asyncpg.Connection
) -> None:
    ledger.clear()
    await insert_pending(conn, ROWS)
    await lock_after_first_batch(locker)
    dbos = DBOS(database_url=db_url, app_version="test")
    with recovery_done() as done:
        await launch_while_locked(dbos, locker)
        try:
            # Another process sharing the executor ID claims the newest rows
            # (as its own recovery would) while this one's batches wait. It
            # lives: it heartbeats and holds its instance lock.
            sibling = ROWS - batch_size()
            await locker.execute(
                "INSERT INTO instances (instance_id, executor_id, app_name, app_version,"
                " hostname, pid, lock_key, started_at, heartbeat_at, heartbeat_ms)"
                " SELECT 'sibling', 'local', 'app', 'test', 'elsewhere', 1, 4242, t, t, 10000"
                " FROM (SELECT (extract(epoch FROM clock_timestamp()) * 1000)::int8) AS c(t)"
            )
            await locker.execute("SELECT pg_advisory_lock(4242)")  # held past the COMMIT
            await locker.execute(
                "UPDATE workflow_status SET claimed_by = 'sibling', fence = fence + 1,"
                " updated_at = (extract(epoch FROM clock_timestamp()) * 1000)::int8"
                " WHERE created_at >= $1",
                sibling,
            )
            await locker.execute("COMMIT")
            await done.wait()
            await wait_for_status(conn, "SUCCESS", sibling)
            rows = await conn.fetch(
                "SELECT status, claimed_by, recovery_attempts, count(*) FROM workflow_status"
                " GROUP BY 1, 2, 3 ORDER BY 1"
            )
            assert [tuple(r) for r in rows] == [
                ("PENDING", "sibling", 0, ROWS - sibling),
                ("SUCCESS", dbos._runtime.instance_id, 1, sibling),
            ]
            assert sorted(ledger) == list(range(sibling))
        finally:
            await dbos.shutdown()


async def test_an_empty_recovery_claims_nothing(db_url: str, conn: asyncpg.Connection) -> None:
    async with DBOS(database_url=db_url, app_version="test") as dbos:
        with SetWorkflowID("only"):
            assert await dbos.start_workflow(ledgered, 7) is not None
        status = await dbos.get_workflow_status("only")
        while status is None or status.status is not WorkflowStatusString.SUCCESS:
            await asyncio.sleep(0.01)
            status = await dbos.get_workflow_status("only")
    assert await conn.fetchval("SELECT max(recovery_attempts) FROM workflow_status") == 0


# -- records dropped once replayed --------------------------------------------------------

sizes: list[int] = []
replayed = asyncio.Event()  # the workflow has gone past its last step
STEPS = 5


def replay_anew() -> None:
    """A fresh event for the replay to come (an event belongs to one test's loop)."""
    global replayed
    replayed = asyncio.Event()


@DBOS.step()
async def numbered(i: int) -> int:
    return i


def recorded_now() -> int:
    """How many records the running workflow's context still holds."""
    wid = DBOS.workflow_id
    assert wid is not None
    running = active_runtime().local[wid]
    assert running.ctx is not None
    return len(running.ctx.recorded)


@DBOS.workflow()
async def counts_records() -> object:
    for i in range(STEPS):
        await numbered(i)
        sizes.append(recorded_now())
    replayed.set()
    return await DBOS.recv("go", timeout_seconds=math.inf)


@DBOS.workflow()
async def counts_in_branches() -> object:
    async def branch(k: int) -> None:
        for i in range(STEPS):
            await numbered(k * 100 + i)

    await asyncio.gather(branch(1), branch(2))
    sizes.append(recorded_now())
    replayed.set()
    return await DBOS.recv("go", timeout_seconds=math.inf)


async def recorded_steps(dbos: DBOS, workflow_id: str, n: int) -> None:
    steps = await dbos.list_workflow_steps(workflow_id)
    while len(steps) < n:
        await asyncio.sleep(0.01)
        steps = await dbos.list_workflow_steps(workflow_id)


async def test_replay_drops_each_record_it_hands_out(db_url: str) -> None:
    total = STEPS + 1  # the steps, and the recv's deadline
    async with DBOS(database_url=db_url, app_version="test") as dbos:
        with SetWorkflowID("drops"):
            await dbos.start_workflow(counts_records)
        await recorded_steps(dbos, "drops", total)
    sizes.clear()
    replay_anew()
    async with DBOS(database_url=db_url, app_version="test") as dbos:  # replays them
        running = dbos._runtime.local["drops"]
        assert running.ctx is not None
        ctx = running.ctx
        await replayed.wait()
        print(f"records held after each replayed step: {sizes}")
        assert sizes == list(range(total - 1, total - 1 - STEPS, -1))
        await dbos.send("drops", "went", topic="go")
        handle = await dbos.retrieve_workflow("drops")
        assert await handle.get_result(timeout=10) == "went"
        assert ctx.recorded == {}  # the recv's deadline was handed out too


async def test_replay_in_branches_drops_their_records(db_url: str) -> None:
    total = 2 * STEPS + 1
    async with DBOS(database_url=db_url, app_version="test") as dbos:
        with SetWorkflowID("drops-branches"):
            await dbos.start_workflow(counts_in_branches)
        await recorded_steps(dbos, "drops-branches", total)
    sizes.clear()
    replay_anew()
    async with DBOS(database_url=db_url, app_version="test") as dbos:
        await replayed.wait()
        print(f"records held once both branches replayed: {sizes}")
        assert sizes == [1]  # only the recv's deadline, not yet reached
        await dbos.send("drops-branches", "went", topic="go")
        handle = await dbos.retrieve_workflow("drops-branches")
        assert await handle.get_result(timeout=10) == "went"


# -- history read a page at a time -----------------------------------------------------

step_runs: list[tuple[int, int]] = []


@DBOS.step()
async def paged_step(i: int, n: int) -> int:
    step_runs.append((i, n))
    return i * 10 + n


@DBOS.workflow()
async def four_steps(i: int) -> list[int]:
    return [await paged_step(i, n) for n in range(4)]


async def test_a_history_read_in_pages_replays_whole_and_once(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dbos_async.systemdb import steps as steps_table

    step_runs.clear()
    async with DBOS(database_url=db_url, app_version="paged") as dbos:
        for i in range(5):
            with SetWorkflowID(f"paged-{i}"):
                assert await four_steps(i) == [i * 10 + n for n in range(4)]
        async with dbos._runtime.connection() as conn:
            await conn.execute(
                "UPDATE workflow_status SET status = 'PENDING', output = NULL"
                " WHERE workflow_id LIKE 'paged-%'"
            )
    ran_first = list(step_runs)
    # 20 recorded steps, 3 a page: histories cross page boundaries.
    monkeypatch.setattr(steps_table, "STEPS_PAGE", 3)
    pages: list[int] = []
    original = steps_table.select_steps_paged

    async def counted(
        conn: object, ids: list[str], page: int | None = None
    ) -> AsyncIterator[tuple[str, dict[object, object]]]:
        async for wid, steps in original(conn, ids, page):  # type: ignore[arg-type]
            pages.append(len(steps))
            yield wid, steps  # type: ignore[misc]

    monkeypatch.setattr(steps_table, "select_steps_paged", counted)
    async with DBOS(database_url=db_url, app_version="paged") as dbos:
        results = [
            await (await dbos.retrieve_workflow(f"paged-{i}")).get_result(timeout=20)
            for i in range(5)
        ]
    assert results == [[i * 10 + n for n in range(4)] for i in range(5)]
    assert pages == [4] * 5  # each workflow got its whole history, once
    assert step_runs == ran_first  # no recorded step ran again
