"""VirtualClock on its own: timer order, upkeep coalescing, exact milliseconds, skipping."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import anyio
import pytest

from dbos_async.clock import REAL, Wake
from dbos_async.testing import VirtualClock

START = datetime(2027, 1, 1, tzinfo=UTC)


async def test_sleepers_wake_in_deadline_order_at_their_own_time() -> None:
    clock = VirtualClock(START)
    woke: list[tuple[str, datetime]] = []

    async def sleeper(name: str, seconds: float) -> None:
        await clock.sleep(seconds)
        woke.append((name, clock.now()))

    async with anyio.create_task_group() as tg:
        for name, seconds in [("c", 30), ("a", 10), ("b", 20), ("late", 100)]:
            tg.start_soon(sleeper, name, seconds)
        await clock.settle()
        await clock.advance(60)
        assert woke == [
            (n, START + timedelta(seconds=s)) for n, s in [("a", 10), ("b", 20), ("c", 30)]
        ]
        assert clock.now() == START + timedelta(seconds=60)
        await clock.advance(40)
    assert woke[-1] == ("late", START + timedelta(seconds=100))


async def test_upkeep_fires_once_per_move_however_far() -> None:
    clock = VirtualClock(START)
    beats: list[datetime] = []

    async def heartbeat() -> None:
        while True:
            await clock.sleep(10, Wake.UPKEEP)
            beats.append(clock.now())

    async with anyio.create_task_group() as tg:
        tg.start_soon(heartbeat)
        await clock.settle()
        await clock.advance(86400)  # 8,640 periods
        assert beats == [START + timedelta(days=1)]
        await clock.advance(5)
        assert len(beats) == 1  # its next beat is 10 s after the last
        await clock.advance(5)
        assert beats[-1] == START + timedelta(days=1, seconds=10)
        tg.cancel_scope.cancel()


async def test_ticks_fire_one_by_one_but_never_drive_skipping() -> None:
    clock = VirtualClock(START)
    ticks: list[datetime] = []

    async def cron() -> None:
        while True:
            await clock.sleep(60, Wake.TICK)
            ticks.append(clock.now())

    async with anyio.create_task_group() as tg:
        tg.start_soon(cron)
        await clock.settle()
        assert not await clock.skip()  # only a tick waits: time stays
        await clock.advance(180)
        assert ticks == [START + timedelta(minutes=m) for m in (1, 2, 3)]
        tg.cancel_scope.cancel()


async def test_skip_moves_to_the_next_work_timer_through_earlier_ticks() -> None:
    clock = VirtualClock(START)
    order: list[str] = []

    async def tick() -> None:
        await clock.sleep(30, Wake.TICK)
        order.append("tick")

    async def work() -> None:
        await clock.sleep(90)
        order.append("work")

    async with anyio.create_task_group() as tg:
        tg.start_soon(tick)
        tg.start_soon(work)
        await clock.settle()
        assert await clock.skip()
    assert order == ["tick", "work"] and clock.now() == START + timedelta(seconds=90)


async def test_milliseconds_are_exact_after_many_small_moves() -> None:
    clock = VirtualClock(1_800_000_000.123)
    for _ in range(1000):
        await clock.advance(0.001)
    assert clock.now_ms() == 1_800_000_001_123
    assert clock.sql_now_ms() == clock.now_ms()
    # A deadline computed from the float time fires exactly at its millisecond.
    fired = asyncio.Event()

    async def at_deadline(deadline: float) -> None:
        with clock.scope(deadline):
            await anyio.sleep_forever()
        fired.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(at_deadline, clock.time() + 3600.007)
        await clock.settle()
        await clock.advance(3600.006)
        assert not fired.is_set()
        await clock.advance(0.001)
        assert fired.is_set()


async def test_bad_moves_are_refused() -> None:
    clock = VirtualClock(START)
    with pytest.raises(ValueError, match="only moves forward"):
        await clock.advance_to(START - timedelta(microseconds=1))
    with pytest.raises(ValueError, match="no time zone"):
        await clock.advance_to(datetime(2030, 1, 1))
    with pytest.raises(ValueError, match="finite seconds"):
        await clock.advance(-1)
    with pytest.raises(ValueError, match="aware datetime or epoch seconds"):
        VirtualClock("2027-01-01")  # type: ignore[arg-type]
    assert clock.now() == START


async def test_the_real_clock_is_the_standard_library() -> None:
    assert not REAL.virtual and REAL.sql_now_ms() is None
    before = REAL.now_ms()
    await REAL.sleep(0.001)
    assert REAL.now_ms() >= before + 1
    with REAL.scope(REAL.time() + 0.001) as scope:
        await anyio.sleep_forever()
    assert scope.cancelled_caught
