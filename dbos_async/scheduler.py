"""Cron schedules: ``@DBOS.scheduled(cron)`` starts a workflow at every tick, once.

Every runtime of the app runs every schedule, and each tick starts the
workflow under the ID ``sched-<name>-<tick in UTC, ISO 8601>``: the runtimes
race to insert that row, one wins, and the others find it taken and run
nothing. Ticks are computed in UTC, so daylight-saving changes can neither
repeat nor skip one. Parsing is cronsim's (Debian cron semantics, with an
optional leading seconds field).

The latest tick started per schedule is kept in ``schedule_ticks``; with
``catch_up=True`` a runtime first starts every tick after it that passed
while no runtime was up. Between ticks a schedule's task sleeps until the next
one: there is no polling.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
from anyio.abc import TaskStatus
from cronsim import CronSim, CronSimError

from dbos_async import registry
from dbos_async.clock import Wake
from dbos_async.context import SetWorkflowID
from dbos_async.logs import get_logger
from dbos_async.systemdb import schedules as schedules_table
from dbos_async.workflow import entry_of, start_soon

if TYPE_CHECKING:
    from dbos_async.runtime import Runtime

logger = get_logger(__name__)

F = TypeVar("F", bound=Callable[..., Coroutine[Any, Any, Any]])
T = TypeVar("T")

_RETRY_DELAYS = (0.1, 0.5, 1.0, 2.0, 5.0)
_HAIR = 0.002


@dataclass(frozen=True, slots=True)
class Schedule:
    """A workflow started at every tick of a cron expression."""

    entry: registry.Registered
    cron: str
    catch_up: bool

    @property
    def name(self) -> str:
        """The schedule's name: its workflow's registered name."""
        return self.entry.name


_schedules: dict[str, Schedule] = {}
_on_declare: list[Callable[[Schedule], None]] = []


def check_cron(cron: str) -> str:
    """Return ``cron`` if cronsim can evaluate it (5 fields, or 6 with seconds first).

    Raises:
        ValueError: the expression is invalid.
    """
    if not isinstance(cron, str):
        raise ValueError(f"a cron expression must be a str, got {type(cron).__name__}")
    try:
        next(CronSim(cron, datetime.now(UTC)))
    except (CronSimError, StopIteration) as exc:
        raise ValueError(f"invalid cron expression {cron!r}: {exc}") from exc
    return cron


def next_tick(cron: str, after: datetime) -> datetime:
    """The first tick strictly after ``after`` (second precision, UTC)."""
    return next(CronSim(cron, after.astimezone(UTC)))


def tick_workflow_id(schedule_name: str, tick: datetime) -> str:
    """The ID of the workflow a tick starts: the same in every runtime."""
    return f"sched-{schedule_name}-{tick.astimezone(UTC).isoformat()}"


def scheduled(cron: str, catch_up: bool = False) -> Callable[[F], F]:
    """Start the decorated workflow at every tick of ``cron``, once across all runtimes.

    Goes above ``@DBOS.workflow()``; the workflow takes ``(scheduled_at,
    actual_at)``, both UTC datetimes. ``cron`` has 5 fields, or 6 with seconds
    first. With ``catch_up``, ticks that passed while no runtime was up run
    too, each once.

    Raises:
        ValueError: ``cron`` is invalid (raised here, at decoration).
    """
    check_cron(cron)

    def decorator(fn: F) -> F:
        entry = entry_of(fn)
        if entry.kind != "workflow":
            raise TypeError("@DBOS.scheduled goes above @DBOS.workflow()")
        schedule = _schedules[entry.name] = Schedule(entry, cron, bool(catch_up))
        for callback in list(_on_declare):  # runtimes already running serve it too
            callback(schedule)
        return fn

    return decorator


def schedules() -> list[Schedule]:
    """Every schedule declared in this process."""
    return list(_schedules.values())


def forget_schedule(name: str) -> None:
    """Drop a schedule (tests declare many; runtimes already serving it go on)."""
    _schedules.pop(name, None)


class Scheduler:
    """Runs every declared schedule for one runtime."""

    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """One task per schedule until cancelled; ``started()`` once they all exist.

        A schedule declared later starts here too; one declared again under
        the same name replaces the one running.
        """
        serving: dict[str, anyio.CancelScope] = {}

        async def serve(schedule: Schedule) -> None:
            with anyio.CancelScope() as scope:
                old = serving.get(schedule.name)
                serving[schedule.name] = scope
                if old is not None:
                    old.cancel()
                await self._serve(schedule)

        async with anyio.create_task_group() as tg:

            def declared(schedule: Schedule) -> None:
                tg.start_soon(serve, schedule)

            _on_declare.append(declared)
            try:
                for schedule in schedules():
                    tg.start_soon(serve, schedule)
                task_status.started()
                await anyio.sleep_forever()
            finally:
                _on_declare.remove(declared)

    async def _serve(self, schedule: Schedule) -> None:
        clock = self._runtime.clock
        after = clock.now()
        if schedule.catch_up:
            last = await _retrying(
                schedule, "read its last tick", lambda: self._last_tick(schedule)
            )
            if last is not None:
                after = min(after, datetime.fromtimestamp(last / 1000, UTC))
        while True:
            tick = next_tick(schedule.cron, after)
            # asyncio may fire a timer up to one clock resolution early: add a
            # hair (a virtual clock fires exactly at the tick).
            await clock.sleep_until(tick.timestamp() + (0 if clock.virtual else _HAIR), Wake.TICK)
            await _retrying(
                schedule,
                f"start the tick {tick.isoformat()}",
                functools.partial(self._start, schedule, tick),
            )
            # Without catch_up, ticks that passed meanwhile (a slow database) are skipped.
            after = tick if schedule.catch_up else max(tick, clock.now())

    async def _last_tick(self, schedule: Schedule) -> int | None:
        async with self._runtime.connection() as conn:
            return await schedules_table.select_schedule_tick(conn, schedule.name)

    async def _start(self, schedule: Schedule, tick: datetime) -> None:
        """Start the tick's workflow (unless a runtime did) and record the tick.

        Only runtimes of the latest live version fire ticks (see versions.py):
        during a deploy the new code's schedules are the ones that run, and a
        schedule the new code dropped stops. While no other version is live,
        this one is the latest.
        """
        runtime = self._runtime
        if runtime.latest_version not in (None, runtime.app_version):
            return
        with SetWorkflowID(tick_workflow_id(schedule.name, tick)):
            await start_soon(schedule.entry, (tick, runtime.clock.now()), {}, runtime)
        async with self._runtime.connection() as conn:
            await schedules_table.record_schedule_tick(
                conn, schedule.name, int(tick.timestamp() * 1000), runtime.clock.now_ms()
            )


async def _retrying(schedule: Schedule, what: str, attempt: Callable[[], Awaitable[T]]) -> T:
    """Await ``attempt()`` until it succeeds, logging each failure.

    A schedule never stops (nor, with it, the runtime) because the database
    was away once.
    """
    failures = 0
    while True:
        try:
            return await attempt()
        except Exception as exc:
            delay = _RETRY_DELAYS[min(failures, len(_RETRY_DELAYS) - 1)]
            failures += 1
            logger.warning(
                "schedule %s: could not %s (%r); retrying in %ss",
                schedule.name,
                what,
                exc,
                delay,
                extra={"action": "schedule", "schedule": schedule.name},
            )
            await anyio.sleep(delay)
