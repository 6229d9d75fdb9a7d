"""The runtime's one clock: every time it reads, and every time it waits until.

A runtime reads the time and waits through its ``clock``: durable sleeps, the
deadlines of ``recv``/``get_event`` and of workflows, step retry intervals,
cron ticks, queue delays and the rate limiter, heartbeats, leases and the
safety polls. The real clock (``REAL``) is the default; its methods are the
standard library's calls, so it costs nothing on the hot path. A test swaps
in ``dbos_async.testing.VirtualClock``, which only moves when told to.

The SQL side takes the time from ``sql_now_ms()``: None with the real clock,
so statements compare with the database's own clock (one clock for the
whole fleet, whatever the hosts' clocks say); a virtual clock passes its
time instead.

Each wait says what it is for (``Wake``): a virtual clock skips forward
automatically only for waits of workflows, never just to run the runtime's
own upkeep or a cron tick.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Awaitable, Callable
from contextlib import AbstractContextManager
from datetime import UTC, datetime
from typing import ClassVar

import anyio


class Wake(enum.Enum):
    """What a wait is for; a virtual clock treats each kind differently."""

    WORK = "work"
    """A workflow waits on it: a durable sleep, a timeout, a deadline, a
    step's retry interval, a queue's delay or rate limit."""
    TICK = "tick"
    """A cron tick: fired in order as time passes, never skipped to alone."""
    UPKEEP = "upkeep"
    """The runtime's own periodic work (heartbeats, leases, safety polls):
    fired at most once per move of a virtual clock, however far it moves."""


class Clock:
    """Real time, the default: thin calls to ``time`` and anyio.

    ``dbos_async.testing.VirtualClock`` subclasses it; the runtime calls
    nothing else.
    """

    virtual: ClassVar[bool] = False

    def time(self) -> float:
        """Now, in epoch seconds."""
        return time.time()

    def now_ms(self) -> int:
        """Now, in epoch milliseconds (what the system tables record)."""
        return time.time_ns() // 1_000_000

    def now(self) -> datetime:
        """Now, as a timezone-aware UTC datetime."""
        return datetime.now(UTC)

    def sql_now_ms(self) -> int | None:
        """The time a statement compares with; None: the database's clock."""
        return None

    def monotonic(self) -> float:
        """Seconds on a clock that never steps back, for measuring intervals."""
        return time.monotonic()

    def scope(self, at: float, wake: Wake = Wake.WORK) -> AbstractContextManager[anyio.CancelScope]:
        """A cancel scope cancelled when the clock reaches ``at`` (epoch seconds; inf: never)."""
        return anyio.CancelScope(deadline=anyio.current_time() + (at - time.time()))

    async def sleep(self, seconds: float, wake: Wake = Wake.WORK) -> None:
        """Wait ``seconds`` on this clock."""
        await anyio.sleep(seconds)

    async def sleep_until(self, at: float, wake: Wake = Wake.WORK) -> None:
        """Wait until the clock reads ``at`` (epoch seconds)."""
        await anyio.sleep(max(0.0, at - time.time()))

    def attach(self, busy: Callable[[], str | None], sync: Callable[[], Awaitable[None]]) -> None:
        """A runtime launched on this clock: how to ask whether it is busy, and sync it.

        The real clock never waits for runtimes to settle: nothing to keep.
        """

    def detach(self, busy: Callable[[], str | None]) -> None:
        """The runtime that attached ``busy`` has stopped."""


REAL = Clock()
"""The real clock: what every runtime uses unless given another."""


def now_ms() -> int:
    """Wall-clock time in epoch milliseconds (for code that has no runtime)."""
    return time.time_ns() // 1_000_000
