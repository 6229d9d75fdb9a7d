"""``VirtualClock``: time that moves only when a test moves it.

A runtime launched with ``DBOS(clock=VirtualClock())`` reads its time and
waits through this clock (see ``dbos_async.clock``). Each wait registers a
timer; ``advance``/``advance_to`` move the time forward from timer to timer,
in deadline order, and after each step wait until every runtime on the clock
has settled: no step body running, no write queued, no connection in use,
and the notifications committed so far delivered. So a test sees the state
the runtime reaches at each moment, in a few milliseconds of real time.

Timers of the runtime's own upkeep (heartbeats, safety polls) fire at most
once per step however far time moves, as after a laptop's sleep; cron ticks
fire one by one. ``skip()`` (what ``TestEnvironment(auto_advance=True)``
runs) moves time only to the next timer a workflow waits on.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from types import TracebackType

import anyio
import anyio.lowlevel

from dbos_async.clock import Clock, Wake

SETTLE_TIMEOUT_SECONDS = 30.0
"""Longest (real) time a move waits for the runtimes to settle before it gives up."""

_QUIET_ROUNDS = 5  # loop iterations with nothing busy before the runtimes count as settled


def _us(epoch_seconds: float) -> int:
    # Whole microseconds: a float epoch is off by up to ~0.2 µs, which would
    # put a deadline a millisecond early once floored to what SQL compares.
    return round(epoch_seconds * 1_000_000)


def _epoch(when: datetime | float) -> float:
    if isinstance(when, datetime):
        if when.tzinfo is None:
            raise ValueError(f"{when!r} has no time zone: pass an aware datetime (e.g. tzinfo=UTC)")
        return when.timestamp()
    if isinstance(when, bool) or not isinstance(when, int | float) or not math.isfinite(when):
        raise ValueError(f"a time must be an aware datetime or epoch seconds, got {when!r}")
    return float(when)


class _Timer:
    """One wait on the clock: a cancel scope the clock cancels when time reaches ``at``."""

    __slots__ = ("_clock", "at", "live", "scope", "wake")

    def __init__(self, clock: VirtualClock, at: float, wake: Wake) -> None:
        self._clock = clock
        self.at = math.inf if math.isinf(at) else _us(at)  # microseconds
        self.wake = wake
        self.live = False
        self.scope = anyio.CancelScope()

    def __enter__(self) -> anyio.CancelScope:
        self.scope.__enter__()
        if self.at <= self._clock._now:
            self.scope.cancel()
        elif not math.isinf(self.at):
            self.live = True
            self._clock._register(self)
        return self.scope

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        self.live = False  # left in the heap; skipped when popped
        return bool(self.scope.__exit__(exc_type, exc, tb))


class VirtualClock(Clock):
    """A clock for tests: it starts at ``start`` (default: now) and moves only when told.

    ``advance(seconds)`` and ``advance_to(datetime)`` wake the waiters they
    pass, in deadline order, and return once the runtimes have settled.
    Give each runtime (each ``TestEnvironment``) its own clock: clocks are
    independent.
    """

    virtual = True

    def __init__(
        self,
        start: datetime | float | None = None,
        *,
        settle_timeout: float = SETTLE_TIMEOUT_SECONDS,
    ) -> None:
        # Epoch microseconds; by default now, to the millisecond.
        self._now = time.time_ns() // 1_000_000 * 1000 if start is None else _us(_epoch(start))
        self.settle_timeout = settle_timeout
        self._timers: list[tuple[float, int, _Timer]] = []
        self._order = itertools.count()
        self._runtimes: dict[Callable[[], str | None], Callable[[], Awaitable[None]]] = {}
        self._moving = asyncio.Lock()
        self._work_added = asyncio.Event()

    def __repr__(self) -> str:
        return f"VirtualClock({self.now().isoformat()})"

    # -- what the runtime reads ----------------------------------------------------------

    def time(self) -> float:
        """Now, in epoch seconds."""
        return self._now / 1_000_000

    def now_ms(self) -> int:
        """Now, in epoch milliseconds."""
        return self._now // 1000

    def now(self) -> datetime:
        """Now, as a UTC datetime."""
        return datetime.fromtimestamp(self._now // 1_000_000, UTC).replace(
            microsecond=self._now % 1_000_000
        )

    def sql_now_ms(self) -> int:
        """Statements compare with this clock, not the database's."""
        return self.now_ms()

    def monotonic(self) -> float:
        """Intervals on this clock too: it never steps back."""
        return self.time()

    def scope(self, at: float, wake: Wake = Wake.WORK) -> _Timer:
        """A cancel scope cancelled once the clock reaches ``at``."""
        return _Timer(self, at, wake)

    async def sleep(self, seconds: float, wake: Wake = Wake.WORK) -> None:
        """Wait ``seconds`` of virtual time."""
        await self.sleep_until(self.time() + seconds, wake)

    async def sleep_until(self, at: float, wake: Wake = Wake.WORK) -> None:
        """Wait until the clock reads ``at``."""
        if _us(at) <= self._now:
            await anyio.lowlevel.checkpoint()
            return
        with self.scope(at, wake):
            await anyio.sleep_forever()

    def attach(self, busy: Callable[[], str | None], sync: Callable[[], Awaitable[None]]) -> None:
        """Wait for this runtime to settle after each move (called at its launch)."""
        self._runtimes[busy] = sync

    def detach(self, busy: Callable[[], str | None]) -> None:
        """The runtime stopped: moves no longer wait for it."""
        self._runtimes.pop(busy, None)

    # -- what tests do ------------------------------------------------------------------

    async def advance(self, seconds: float) -> None:
        """Move time forward ``seconds``; see ``advance_to``."""
        if not seconds >= 0 or not math.isfinite(seconds):
            raise ValueError(f"advance needs finite seconds >= 0, got {seconds!r}")
        await self.advance_to((self._now + _us(seconds)) / 1_000_000)

    async def advance_to(self, when: datetime | float) -> None:
        """Move time forward to ``when``, waking each waiter it passes in deadline order.

        After each wake-up (and at the end) it waits until the runtimes have
        settled, so what the woken workflows did is recorded when it returns.

        Raises:
            ValueError: ``when`` is earlier than now (time only moves forward).
            TimeoutError: the runtimes stayed busy longer than ``settle_timeout``
                real seconds (a step body that never returns, for instance).
        """
        target = _us(_epoch(when))
        if target < self._now:
            raise ValueError(
                f"time only moves forward: {when!r} is before now ({self.now().isoformat()})"
            )
        async with self._moving:
            await self.settle()
            await self._move_to(target)

    async def skip(self) -> bool:
        """Once the runtimes have settled, move to the next time a workflow waits for.

        Returns whether time moved. Upkeep and cron timers alone never move
        it: time would run on forever.
        """
        async with self._moving:
            await self.settle(within=None)
            at = self._next(math.inf, work_only=True)
            if at is None:
                return False
            await self._move_to(at)
            return True

    async def work_pending(self) -> None:
        """Return once some workflow waits on a timer of this clock."""
        while self._next(math.inf, work_only=True) is None:
            self._work_added.clear()
            await self._work_added.wait()

    async def settle(self, within: float | None = -1.0) -> None:
        """Return once every runtime on this clock has settled (see the module docstring).

        ``within``: real seconds (None: no bound; the default is the clock's
        ``settle_timeout``).

        Raises:
            TimeoutError: a runtime stayed busy that long; the message says with what.
        """
        limit = self.settle_timeout if within is not None and within < 0 else within
        loop = asyncio.get_running_loop()
        give_up = math.inf if limit is None else loop.time() + limit
        quiet = 0
        synced = False
        spins = 0
        while True:
            busy = self._busy()
            if busy is None:
                quiet += 1
                if quiet >= _QUIET_ROUNDS:
                    if synced:
                        return
                    # Notifications committed so far reach their waiters, who may
                    # have more to do.
                    for sync in list(self._runtimes.values()):
                        await sync()
                    synced, quiet = True, 0
                    continue
                await asyncio.sleep(0)
                continue
            quiet, synced = 0, False
            if loop.time() > give_up:
                raise TimeoutError(
                    f"the runtime did not settle within {limit} s of real time ({busy}):"
                    " a step body that waits on something outside the runtime?"
                )
            spins += 1
            # A step doing real I/O: do not spin the CPU while it works.
            await asyncio.sleep(0 if spins < 200 else 0.001)

    # -- internals ------------------------------------------------------------------------

    async def _move_to(self, target: float) -> None:
        # ``target`` in microseconds, like every time here.
        # Timer by timer (cron ticks included), settling after each.
        while (at := self._next(target, work_only=False)) is not None:
            self._now = max(self._now, int(at))
            self._fire_due()
            await self.settle()
        self._now = max(self._now, int(target))
        self._fire_due()
        await self.settle()

    def _register(self, timer: _Timer) -> None:
        heapq.heappush(self._timers, (timer.at, next(self._order), timer))
        if timer.wake is Wake.WORK:
            self._work_added.set()

    def _busy(self) -> str | None:
        for busy in list(self._runtimes):
            reason = busy()
            if reason is not None:
                return reason
        return None

    def _next(self, limit: float, *, work_only: bool) -> float | None:
        """The earliest live timer at or before ``limit`` (upkeep ones never count)."""
        while self._timers and not self._timers[0][2].live:
            heapq.heappop(self._timers)
        best: float | None = None
        for at, _, timer in self._timers:
            if not timer.live or at > limit or timer.wake is Wake.UPKEEP:
                continue
            if work_only and timer.wake is not Wake.WORK:
                continue
            if best is None or at < best:
                best = at
        return best

    def _fire_due(self) -> None:
        while self._timers and self._timers[0][0] <= self._now:
            _, _, timer = heapq.heappop(self._timers)
            if timer.live:
                timer.live = False
                timer.scope.cancel()
