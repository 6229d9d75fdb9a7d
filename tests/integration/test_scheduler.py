"""Cron schedules: ticks run once across runtimes, catch-up after downtime, UTC tick IDs."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
import asyncpg
import pytest

from dbos_async import DBOS, DatabaseUnavailableError
from dbos_async.scheduler import forget_schedule
from dbos_async.systemdb import schedules as schedules_table

Seen = list[tuple[datetime, datetime]]


@pytest.fixture
def schedule_names() -> Iterator[list[str]]:
    names: list[str] = []
    yield names
    for name in names:
        forget_schedule(name)


def every_second(name: str, seen: Seen, enough: int, done: asyncio.Event, catch_up: bool) -> None:
    @DBOS.scheduled("* * * * * *", catch_up=catch_up)
    @DBOS.workflow(name=name)
    async def tick(scheduled_at: datetime, actual_at: datetime) -> None:
        seen.append((scheduled_at, actual_at))
        if len(seen) >= enough:
            done.set()


async def test_each_tick_runs_once_across_two_runtimes(
    db_url: str, conn: asyncpg.Connection, schedule_names: list[str]
) -> None:
    seen: Seen = []
    done = asyncio.Event()
    schedule_names.append("ts.shared")
    every_second("ts.shared", seen, 3, done, catch_up=False)
    async with (
        DBOS(database_url=db_url, app_version="test", executor_id="a"),
        DBOS(database_url=db_url, app_version="test", executor_id="b"),
    ):
        with anyio.fail_after(10):
            await done.wait()
    ticks = [scheduled for scheduled, _ in seen]
    assert len(ticks) == len(set(ticks)) >= 3  # both runtimes raced for every tick
    for scheduled, actual in seen:
        assert scheduled.tzinfo is not None and scheduled.utcoffset() == timedelta(0)
        assert scheduled.microsecond == 0 and actual >= scheduled
    rows = await conn.fetch(
        "SELECT workflow_id, executor_id FROM workflow_status WHERE name = 'ts.shared'"
    )
    assert len(rows) >= len(ticks)
    expected = {f"sched-ts.shared-{t.isoformat()}" for t in ticks}
    assert expected <= {r["workflow_id"] for r in rows}
    last = await conn.fetchval(
        "SELECT last_tick_ms FROM schedule_ticks WHERE schedule_name = 'ts.shared'"
    )
    assert last >= max(ticks).timestamp() * 1000


@pytest.mark.parametrize("catch_up", [True, False])
async def test_missed_ticks_run_once_each_with_catch_up(
    db_url: str, conn: asyncpg.Connection, schedule_names: list[str], catch_up: bool
) -> None:
    name = f"ts.catch_up_{catch_up}".lower()
    schedule_names.append(name)
    down_since = datetime.fromtimestamp(int(time.time()) - 5, UTC)  # "everything was down"
    await conn.execute(
        "INSERT INTO schedule_ticks VALUES ($1, $2, 0)", name, int(down_since.timestamp() * 1000)
    )
    seen: Seen = []
    done = asyncio.Event()
    every_second(name, seen, 6 if catch_up else 2, done, catch_up=catch_up)
    launched = datetime.now(UTC)
    async with DBOS(database_url=db_url, app_version="test"):
        with anyio.fail_after(10):
            await done.wait()
    ticks = sorted(scheduled for scheduled, _ in seen)
    assert len(ticks) == len(set(ticks))
    missed = [down_since + timedelta(seconds=i) for i in range(1, 5)]
    if catch_up:
        assert ticks[: len(missed)] == missed  # each missed tick, once, oldest first
    else:
        assert all(t > launched - timedelta(seconds=1) for t in ticks), (ticks, launched)


async def test_a_schedule_declared_after_launch_runs(dbos: DBOS) -> None:
    ticked = asyncio.Event()

    @DBOS.workflow(name="tests.late_schedule")
    async def late(scheduled_at: datetime, actual_at: datetime) -> None:
        ticked.set()

    DBOS.scheduled("* * * * * *")(late)  # every second, declared while running
    try:
        with anyio.fail_after(5):
            await ticked.wait()
    finally:
        forget_schedule("tests.late_schedule")


async def test_a_catch_up_whose_first_read_fails_retries_and_the_runtime_lives(
    db_url: str,
    conn: asyncpg.Connection,
    schedule_names: list[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    name = "ts.catch_up_read_fails"
    schedule_names.append(name)
    down_since = datetime.fromtimestamp(int(time.time()) - 3, UTC)
    await conn.execute(
        "INSERT INTO schedule_ticks VALUES ($1, $2, 0)", name, int(down_since.timestamp() * 1000)
    )
    failed = []
    original = schedules_table.select_schedule_tick

    async def lost_once(c: Any, schedule_name: str) -> int | None:
        if schedule_name == name and not failed:
            failed.append(schedule_name)
            raise DatabaseUnavailableError("Lost the database connection: (injected)")
        return await original(c, schedule_name)

    monkeypatch.setattr(schedules_table, "select_schedule_tick", lost_once)
    seen: Seen = []
    done = asyncio.Event()
    every_second(name, seen, 2, done, catch_up=True)
    async with DBOS(database_url=db_url, app_version="test") as dbos:
        with anyio.fail_after(10):
            await done.wait()
        # The runtime is still up: the failed read stopped nothing.
        assert dbos._runtime.state.value == "running"
    assert failed == [name]
    assert min(t for t, _ in seen) == down_since + timedelta(seconds=1)  # caught up
