"""The virtual clock through the runtime and its SQL, and ``TestEnvironment`` (issue 11).

Every test runs on virtual time: days pass in milliseconds. What the
workflows did is checked from a ledger their step bodies write, with the
virtual time each body saw.
"""

from __future__ import annotations

import asyncio
import math
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import anyio
import asyncpg
import pytest

from dbos_async import (
    DBOS,
    DBOSError,
    Queue,
    SetEnqueueOptions,
    SetWorkflowTimeout,
    WorkflowCancelledError,
)
from dbos_async.history import dump_document, export_histories
from dbos_async.queue import forget_queue
from dbos_async.scheduler import forget_schedule
from dbos_async.testing import TestEnvironment, VirtualClock

DAY = 86400.0
START = datetime(2027, 3, 1, 8, 30, tzinfo=UTC)

# What step bodies did: (what, virtual time they saw).
LEDGER: list[tuple[str, datetime]] = []


@pytest.fixture(autouse=True)
def fresh_ledger() -> Iterator[None]:
    LEDGER.clear()
    yield
    LEDGER.clear()


def entries(prefix: str) -> list[tuple[str, datetime]]:
    return [e for e in LEDGER if e[0].startswith(prefix)]


@DBOS.step()
async def note(what: str) -> None:
    LEDGER.append((what, await DBOS.now()))


@DBOS.workflow()
async def sleeper(tag: str, seconds: float) -> datetime:
    await note(f"{tag}:before")
    await DBOS.sleep(seconds)
    await note(f"{tag}:after")
    return await DBOS.now()


@DBOS.workflow()
async def receiver(wait_seconds: float | None) -> str | None:
    wait = math.inf if wait_seconds is None else wait_seconds  # None: wait for ever
    message: str | None = await DBOS.recv("topic", timeout_seconds=wait)
    return message


@DBOS.workflow()
async def child_sleeper(seconds: float) -> str:
    await DBOS.sleep(seconds)
    await note("child:woke")
    return "child done"


@DBOS.workflow()
async def parent_of_sleeper(seconds: float) -> str:
    handle = await DBOS.start_workflow(child_sleeper, seconds)
    await note(f"parent:child={handle.workflow_id}")
    result: str = await handle.get_result()
    return result


def env(url: str, **options: object) -> TestEnvironment:
    return TestEnvironment(url, clock=VirtualClock(START), **options)  # type: ignore[arg-type]


async def status_of(e: TestEnvironment, workflow_id: str) -> str:
    return (await e.dbos.get_workflow_status(workflow_id)).status.value  # type: ignore[union-attr]


async def test_a_one_day_sleep_ends_exactly_after_one_virtual_day(pg_server_url: str) -> None:
    async with env(pg_server_url) as e:
        handle = await e.dbos.start_workflow(sleeper, "day", DAY)
        await e.clock.advance(DAY - 1)
        assert await status_of(e, handle.workflow_id) == "PENDING"
        assert [w for w, _ in LEDGER] == ["day:before"]
        await e.clock.advance(1)
        assert await handle.get_result() == START + timedelta(days=1)
        assert LEDGER == [("day:before", START), ("day:after", START + timedelta(days=1))]
        # The rows carry virtual times too (the SQL side uses the same clock).
        async with e.dbos._runtime.connection() as conn:
            created, updated = await conn.fetchrow(
                "SELECT created_at, updated_at FROM workflow_status WHERE workflow_id = $1",
                handle.workflow_id,
            )
        assert created == int(START.timestamp() * 1000)
        assert updated == int((START + timedelta(days=1)).timestamp() * 1000)


async def test_recv_times_out_on_virtual_time_and_a_message_beats_it(pg_server_url: str) -> None:
    async with env(pg_server_url) as e:
        lonely = await e.dbos.start_workflow(receiver, 3600)
        lucky = await e.dbos.start_workflow(receiver, 3600)
        await e.clock.advance(600)
        await e.dbos.send(lucky.workflow_id, "hello", "topic")
        assert await lucky.get_result() == "hello"
        await e.clock.advance(2999)
        assert await status_of(e, lonely.workflow_id) == "PENDING"
        await e.clock.advance(1)
        assert await lonely.get_result() is None


async def test_a_workflow_deadline_cascades_to_its_child(pg_server_url: str) -> None:
    async with env(pg_server_url) as e:
        with SetWorkflowTimeout(3600):
            parent = await e.dbos.start_workflow(parent_of_sleeper, 2 * 3600)
        await e.clock.advance(3599)
        (child_note,) = entries("parent:child=")
        child_id = child_note[0].partition("=")[2]
        assert await status_of(e, child_id) == "PENDING"
        await e.clock.advance(1)
        deadline_ms = int((START + timedelta(hours=1)).timestamp() * 1000)
        with pytest.raises(WorkflowCancelledError) as caught:
            await parent.get_result()
        assert caught.value.deadline_epoch_ms == deadline_ms
        assert await status_of(e, child_id) == "CANCELLED"
        child = await e.dbos.get_workflow_status(child_id)
        assert child is not None and child.deadline_epoch_ms == deadline_ms
        await e.clock.advance(2 * 3600)
        assert entries("child:woke") == []  # it never woke: cancelled at the parent's deadline


async def test_cron_catch_up_across_advance_to_fires_each_tick_once(pg_server_url: str) -> None:
    name = f"hourly-{uuid.uuid4().hex[:8]}"

    @DBOS.scheduled("0 * * * *", catch_up=True)
    @DBOS.workflow(name=name)
    async def hourly(scheduled_at: datetime, actual_at: datetime) -> None:
        await note(f"tick|{scheduled_at.isoformat()}|{actual_at.isoformat()}")

    hour = timedelta(hours=1)
    first = START.replace(minute=0) + hour  # 09:00
    try:
        async with env(pg_server_url) as e:
            await e.clock.advance_to(START + 3 * hour)  # 11:30: 09:00, 10:00, 11:00
            # Live ticks start exactly at their time, in order.
            assert [w for w, _ in entries("tick|")] == [
                f"tick|{t.isoformat()}|{t.isoformat()}"
                for t in (first, first + hour, first + 2 * hour)
            ]
            await e.crash()  # down from 11:30 to 15:30: 12:00 ... 15:00 are missed
            await e.clock.advance_to(START + 7 * hour)
            await e.restart()
            await e.settle()
            await e.clock.advance_to(START + 7 * hour + timedelta(minutes=40))  # 16:00 too
            seen = [w.split("|") for w, _ in entries("tick|")]
            scheduled = [datetime.fromisoformat(s) for _, s, _ in seen]
            assert scheduled == [first + i * hour for i in range(8)], seen
            # The missed ones ran at the restart (15:30), 16:00 at its time.
            actual = [datetime.fromisoformat(a) for _, _, a in seen]
            assert actual[3:7] == [START + 7 * hour] * 4 and actual[7] == first + 7 * hour
            async with e.dbos._runtime.connection() as conn:
                ids = await conn.fetch(
                    "SELECT workflow_id FROM workflow_status WHERE name = $1", name
                )
            assert len(ids) == 8
    finally:
        forget_schedule(name)


async def test_a_queue_delay_of_an_hour_and_a_one_minute_rate_limit(pg_server_url: str) -> None:
    delayed = Queue(f"delayed-{uuid.uuid4().hex[:8]}")
    limited = Queue(f"limited-{uuid.uuid4().hex[:8]}", limiter={"limit": 2, "period": 60})
    try:
        async with env(pg_server_url) as e:
            with SetEnqueueOptions(delay_seconds=3600):
                later = await delayed.enqueue(sleeper, "delayed", 0)
            await e.clock.advance(3599)
            assert await status_of(e, later.workflow_id) == "ENQUEUED"
            await e.clock.advance(1)
            assert await later.get_result() == START + timedelta(hours=1)

            handles = [await limited.enqueue(sleeper, f"rate{i}", 0) for i in range(5)]
            await e.settle()
            assert len(entries("rate")) == 2 * 2  # two started (before and after each)
            await e.clock.advance(59)
            assert len(entries("rate")) == 2 * 2
            await e.clock.advance(1)
            assert len(entries("rate")) == 4 * 2
            await e.clock.advance(60)
            for h in handles:
                await h.get_result()
            starts = sorted(t for w, t in entries("rate") if w.endswith(":before"))
            base = START + timedelta(hours=1)
            assert starts == [
                base,
                base,
                base + timedelta(minutes=1),
                base + timedelta(minutes=1),
                base + timedelta(minutes=2),
            ]
    finally:
        forget_queue(delayed.name)
        forget_queue(limited.name)


async def test_a_crash_and_restart_mid_sleep_keeps_the_recorded_wake_time(
    pg_server_url: str,
) -> None:
    async with env(pg_server_url) as e:
        handle = await e.dbos.start_workflow(sleeper, "crash", DAY)
        await e.clock.advance(DAY / 2)
        await e.crash()
        with pytest.raises(DBOSError, match="crashed"):
            await handle.get_status()
        # Nothing was written on the way down: the workflow and its instance
        # are as a SIGKILL leaves them.
        conn = await asyncpg.connect(e.database_url)
        try:
            row = await conn.fetchrow(
                f"SELECT status, claimed_by FROM {e.schema}.workflow_status WHERE workflow_id = $1",
                handle.workflow_id,
            )
            instances = await conn.fetchval(f"SELECT count(*) FROM {e.schema}.instances")
        finally:
            await conn.close()
        assert row["status"] == "PENDING" and instances == 1
        await e.restart()
        await e.clock.advance(DAY / 2 - 1)
        again = await e.dbos.retrieve_workflow(handle.workflow_id)
        assert (await again.get_status()).status.value == "PENDING"
        await e.clock.advance(1)
        assert await again.get_result() == START + timedelta(days=1)
        # Each body ran once: the first step's result was replayed, not run again.
        assert [w for w, _ in LEDGER] == ["crash:before", "crash:after"]
        status = await again.get_status()
        assert status.recovery_attempts == 1


async def test_two_environments_side_by_side_keep_their_own_clocks(pg_server_url: str) -> None:
    async with env(pg_server_url) as a, env(pg_server_url) as b:
        assert a.database_url != b.database_url
        in_a = await a.dbos.start_workflow(sleeper, "a", 3600)
        in_b = await b.dbos.start_workflow(sleeper, "b", 3600)
        await a.clock.advance(3600)
        assert await in_a.get_result() == START + timedelta(hours=1)
        assert b.clock.now() == START
        assert await status_of(b, in_b.workflow_id) == "PENDING"
        assert await a.dbos.get_workflow_status(in_b.workflow_id) is None
        await b.clock.advance(3600)
        assert await in_b.get_result() == START + timedelta(hours=1)


attempts: list[datetime] = []


@DBOS.step(retries_allowed=True, interval_seconds=600, backoff_rate=2, max_attempts=3)
async def flaky() -> str:
    attempts.append(await DBOS.now())
    if len(attempts) < 3:
        raise RuntimeError("not yet")
    return "finally"


@DBOS.workflow()
async def patient() -> str:
    value: str = await flaky()
    await DBOS.sleep(3 * DAY)
    return value


async def test_auto_advance_skips_retry_intervals_and_sleeps(pg_server_url: str) -> None:
    attempts.clear()
    async with env(pg_server_url, auto_advance=True) as e:
        handle = await e.dbos.start_workflow(patient)
        with anyio.fail_after(10):
            assert await handle.get_result() == "finally"
        assert attempts == [START, START + timedelta(seconds=600), START + timedelta(seconds=1800)]
        assert e.clock.now() == START + timedelta(seconds=1800, days=3)


async def test_auto_advance_does_not_run_time_for_upkeep_alone(pg_server_url: str) -> None:
    async with env(pg_server_url, auto_advance=True) as e:
        handle = await e.dbos.start_workflow(receiver, None)
        await e.settle()
        await asyncio.sleep(0.05)  # real time: the skipper has had its chance
        assert e.clock.now() == START  # only heartbeats and polls wait on time
        await e.dbos.send(handle.workflow_id, "late", "topic")
        assert await handle.get_result() == "late"


@DBOS.step()
async def charge(amount: int) -> str:
    raise RuntimeError("the real payment service is not reachable from tests")


@DBOS.workflow()
async def checkout(amount: int) -> str:
    return await charge(amount)


async def test_override_step_replaces_only_the_body(pg_server_url: str) -> None:
    async with env(pg_server_url) as e:
        e.override_step(charge, lambda amount: f"charged {amount}")  # a sync fake for an async step
        handle = await e.dbos.start_workflow(checkout, 5)
        assert await handle.get_result() == "charged 5"
        steps = await e.dbos.list_workflow_steps(handle.workflow_id)
        assert [s.name for s in steps] == [charge.__dbos_entry__.name]  # type: ignore[attr-defined]
        with pytest.raises(ValueError, match=r"no @DBOS\.step"):
            e.override_step("no.such.step", lambda: None)
        with pytest.raises(ValueError, match="not a registered"):
            e.override_step(print, lambda: None)


async def test_replay_checks_an_exported_history(pg_server_url: str, tmp_path: Path) -> None:
    async with env(pg_server_url) as e:
        handle = await e.dbos.start_workflow(sleeper, "replayed", 60)
        await e.clock.advance(60)
        await handle.get_result()
        document = await export_histories(e.dbos._runtime.pool, [handle.workflow_id])
    good = tmp_path / "good.json"
    await anyio.Path(good).write_bytes(dump_document(document))
    # The same history, claiming the workflow's first call was another function.
    calls = document["workflows"][0]["calls"]
    calls[0]["function_name"] = "somewhere.else"
    bad = tmp_path / "bad.json"
    await anyio.Path(bad).write_bytes(dump_document(document))
    async with env(pg_server_url) as e:
        (result,) = await e.replay(good)
        assert result.compatible
        with pytest.raises(AssertionError, match="1 of 1 recorded workflows do not replay"):
            await e.replay(bad)


@DBOS.step()
async def stuck(gate: asyncio.Event) -> None:
    await gate.wait()


@DBOS.workflow()
async def waits_on_a_gate() -> None:
    await stuck(GATE)


GATE = asyncio.Event()


async def test_moves_are_checked_and_bounded(pg_server_url: str) -> None:
    async with TestEnvironment(pg_server_url, clock=VirtualClock(START, settle_timeout=0.3)) as e:
        with pytest.raises(ValueError, match="only moves forward"):
            await e.clock.advance_to(START - timedelta(seconds=1))
        with pytest.raises(ValueError, match="no time zone"):
            await e.clock.advance_to(datetime(2030, 1, 1))
        with pytest.raises(ValueError, match="finite seconds"):
            await e.clock.advance(float("nan"))
        GATE.clear()
        handle = await e.dbos.start_workflow(waits_on_a_gate)
        with pytest.raises(TimeoutError, match="a step body runs"):
            await e.clock.advance(1)
        GATE.set()
        await handle.get_result()


async def test_a_long_jump_runs_upkeep_once_not_per_period(pg_server_url: str) -> None:
    async with env(pg_server_url) as e:
        conn: asyncpg.Connection = await asyncpg.connect(e.database_url)
        try:
            await e.clock.advance(30 * DAY)  # 259,200 heartbeat periods: one heartbeat
            beat = await conn.fetchval(f"SELECT max(heartbeat_at) FROM {e.schema}.instances")
            assert beat == e.clock.now_ms()
            # Its version is live at the virtual now (the SQL compares virtual times).
            versions = await e.dbos.list_application_versions()
            assert [(v.version, v.live_executors, v.is_latest) for v in versions] == [
                ("test", 1, True)
            ]
        finally:
            await conn.close()


async def test_a_role_that_cannot_create_databases_gets_a_schema(
    db_url: str, conn: asyncpg.Connection
) -> None:
    role = f"dbos_nocreatedb_{uuid.uuid4().hex[:8]}"
    database = db_url.rsplit("/", 1)[1]
    await conn.execute(f"CREATE ROLE \"{role}\" LOGIN NOCREATEDB PASSWORD '{role}'")
    await conn.execute(f'GRANT CREATE ON DATABASE "{database}" TO "{role}"')
    parts = urlsplit(db_url)
    url = urlunsplit(parts._replace(netloc=f"{role}:{role}@{parts.hostname}:{parts.port or 5432}"))
    try:
        async with env(url) as e:
            assert e.database_url == url and e.schema.startswith("dbos_test_")
            handle = await e.dbos.start_workflow(sleeper, "schema", 60)
            await e.clock.advance(60)
            assert await handle.get_result() == START + timedelta(minutes=1)
        schemas = await conn.fetchval(
            "SELECT count(*) FROM pg_namespace WHERE nspname = $1", e.schema
        )
        assert schemas == 0  # dropped on exit
    finally:
        await conn.execute(f'DROP OWNED BY "{role}" CASCADE')
        await conn.execute(f'DROP ROLE "{role}"')


async def test_without_a_url_it_runs_on_an_embedded_postgres(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("DBOS_TEST_DATABASE_URL", raising=False)
    async with TestEnvironment(clock=VirtualClock(START)) as e:
        assert "127.0.0.1" in e.database_url
        handle = await e.dbos.start_workflow(sleeper, "embedded", DAY)
        await e.clock.advance(DAY)
        assert await handle.get_result() == START + timedelta(days=1)


async def test_a_runtime_woken_after_a_long_jump_does_not_strand_its_own_work(
    pg_server_url: str,
) -> None:
    async with env(pg_server_url) as e:
        await e.dbos.start_workflow(sleeper, "long", 365 * DAY)
        # The stranding count runs every ninth heartbeat; each day-long jump
        # wakes the heartbeat once, long after the last one.
        for _ in range(2 * 9):
            await e.clock.advance(DAY)
        assert e.dbos._runtime.stranded_workflows == 0


@DBOS.transaction()
async def count_rows() -> int:
    value: int = await DBOS.connection.fetchval("SELECT count(*) FROM pg_class WHERE false")
    return value


@DBOS.workflow()
async def sleeps_then_transacts() -> int:
    await DBOS.sleep(60)
    return await count_rows()


async def test_the_first_transaction_after_a_timer_is_waited_for(pg_server_url: str) -> None:
    # The transactions' pool opens on first use: that counts as busy too.
    async with env(pg_server_url) as e:
        handle = await e.dbos.start_workflow(sleeps_then_transacts)
        await e.clock.advance(59)  # upkeep fires here, not in the next move
        await e.clock.advance(1)
        assert (await handle.get_status()).status.value == "SUCCESS"


THREAD_LEDGER: list[str] = []
ENTERED = threading.Event()
GO = threading.Event()


@DBOS.step()
def blocking_body() -> str:  # a sync body: it runs in a worker thread
    THREAD_LEDGER.append("start")
    ENTERED.set()
    GO.wait(10)
    THREAD_LEDGER.append("end")
    return "done"


@DBOS.workflow()
async def runs_a_thread() -> str:
    return await blocking_body()


async def test_restart_waits_for_a_thread_body_the_crash_could_not_stop(
    pg_server_url: str,
) -> None:
    THREAD_LEDGER.clear()
    ENTERED.clear()
    GO.clear()
    async with env(pg_server_url) as e:
        handle = await e.dbos.start_workflow(runs_a_thread)
        assert await anyio.to_thread.run_sync(ENTERED.wait, 10)
        old = e.dbos._runtime
        await e.crash()
        assert old.body_threads.running == 1  # Python cannot stop a thread
        GO.set()
        await e.restart()  # after the old body ended: the re-run never overlaps it
        assert old.body_threads.running == 0
        again = await e.dbos.retrieve_workflow(handle.workflow_id)
        assert await again.get_result() == "done"
        assert THREAD_LEDGER == ["start", "end", "start", "end"]


async def test_set_latest_version_stamps_the_virtual_time(pg_server_url: str) -> None:
    async with TestEnvironment(
        pg_server_url, clock=VirtualClock(datetime(2020, 1, 1, tzinfo=UTC))
    ) as e:
        await e.dbos.set_latest_application_version("test")
        async with e.dbos._runtime.connection() as conn:
            latest_at = await conn.fetchval("SELECT latest_at FROM app_versions")
        assert e.clock.now_ms() <= latest_at <= e.clock.now_ms() + 1
