"""``@DBOS.step`` and durable ``DBOS.sleep``: checkpointed units of work inside workflows.

A fresh step costs one round trip: its checkpoint write, group-committed with
the checkpoints of other workflows' steps. Recorded steps were read once when
the workflow (re)started, so replaying a step reads nothing.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import time
from collections.abc import Callable, Coroutine
from typing import Any, ParamSpec, TypeVar, overload

import anyio

from dbos_async import registry, serialization
from dbos_async.context import WorkflowContext, current_step_id, current_workflow
from dbos_async.errors import MaxStepRetriesExceeded
from dbos_async.systemdb.steps import StepRecord
from dbos_async.workflow import check_replay, now_ms

P = ParamSpec("P")
R = TypeVar("R")

StepDecorator = Callable[[Callable[P, Any]], Callable[P, Coroutine[Any, Any, Any]]]


def step(
    name: str | None = None,
    retries_allowed: bool = False,
    max_attempts: int = 3,
    interval_seconds: float = 1.0,
    backoff_rate: float = 2.0,
) -> _StepDecorator:
    """Declare a step (see ``DBOS.step``)."""
    if max_attempts < 1:
        raise ValueError("max_attempts must be >= 1")
    if interval_seconds < 0 or backoff_rate <= 0:
        raise ValueError("interval_seconds must be >= 0 and backoff_rate > 0")
    return _StepDecorator(
        name,
        attempts=max_attempts if retries_allowed else 1,
        retries_allowed=retries_allowed,
        interval=interval_seconds,
        backoff=backoff_rate,
    )


class _StepDecorator:
    def __init__(
        self,
        name: str | None,
        *,
        attempts: int,
        retries_allowed: bool,
        interval: float,
        backoff: float,
    ) -> None:
        self.name = name
        self.options = {
            "attempts": attempts,
            "retries_allowed": retries_allowed,
            "interval": interval,
            "backoff": backoff,
        }

    @overload
    def __call__(
        self, fn: Callable[P, Coroutine[Any, Any, R]]
    ) -> Callable[P, Coroutine[Any, Any, R]]: ...

    @overload
    def __call__(self, fn: Callable[P, R]) -> Callable[P, Coroutine[Any, Any, R]]: ...

    def __call__(self, fn: Callable[P, Any]) -> Callable[P, Coroutine[Any, Any, Any]]:
        entry = registry.register("step", fn, self.name, **self.options)
        entry.options["is_async"] = inspect.iscoroutinefunction(fn)

        @functools.wraps(fn)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> Coroutine[Any, Any, Any]:
            ctx = current_workflow.get()
            if ctx is None or current_step_id.get() is not None:
                # Outside a workflow, or nested in a step: just run it.
                return _run_body(entry, args, kwargs, None)
            # Taken now, before any await, so gather() order is call order.
            return _run_step(ctx, ctx.take_step_id(), entry, args, kwargs)

        wrapper.__dbos_entry__ = entry  # type: ignore[attr-defined]
        entry.options["wrapper"] = wrapper  # an enqueued step runs through it
        return wrapper


async def _run_step(
    ctx: WorkflowContext,
    step_id: int,
    entry: registry.Registered,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> Any:
    recorded = ctx.recorded.get(step_id)
    if recorded is not None:
        return replay(ctx, step_id, entry, recorded)
    started = now_ms()
    token = current_step_id.set(step_id)
    try:
        value = await _run_body(entry, args, kwargs, ctx)
    except Exception as exc:
        mine = StepRecord(
            ctx.workflow_id,
            step_id,
            entry.name,
            error=serialization.encode_exception(exc),
            started_at=started,
            completed_at=now_ms(),
            fence=ctx.fence,
        )
        winner = await ctx.runtime.step_writer.submit(mine)
        if winner is mine:
            raise
        return replay(ctx, step_id, entry, winner)
    finally:
        current_step_id.reset(token)
    mine = StepRecord(
        ctx.workflow_id,
        step_id,
        entry.name,
        output=serialization.encode(value, f"the result of step {entry.name}"),
        started_at=started,
        completed_at=now_ms(),
        fence=ctx.fence,
    )
    winner = await ctx.runtime.step_writer.submit(mine)
    # Another execution of this workflow recorded the step first: its outcome stands.
    return value if winner is mine else replay(ctx, step_id, entry, winner)


def replay(
    ctx: WorkflowContext, step_id: int, entry: registry.Registered, recorded: StepRecord
) -> Any:
    """Return (or raise) a recorded step outcome without running the body."""
    check_replay(ctx, step_id, entry.name, recorded)
    if recorded.error is not None:
        raise serialization.decode_exception(recorded.error)
    return serialization.decode(recorded.output, serialization.return_annotation(entry.fn))


async def _run_body(
    entry: registry.Registered,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    ctx: WorkflowContext | None,
) -> Any:
    """Run the body with the step's retry policy; sync bodies go to a worker thread."""
    options = entry.options
    last: Exception | None = None
    for attempt in range(options["attempts"]):
        if attempt:
            await anyio.sleep(options["interval"] * options["backoff"] ** (attempt - 1))
        try:
            if options["is_async"]:
                return await entry.fn(*args, **kwargs)
            limiter = ctx.runtime.thread_limiter if ctx is not None else None
            # A thread cannot be interrupted: on cancellation the workflow moves
            # on at once and the body finishes unrecorded in the background.
            return await anyio.to_thread.run_sync(
                functools.partial(entry.fn, *args, **kwargs),
                limiter=limiter,
                abandon_on_cancel=True,
            )
        except Exception as exc:
            last = exc
    assert last is not None
    if options["retries_allowed"]:
        raise MaxStepRetriesExceeded(entry.name, options["attempts"], last) from last
    raise last


SLEEP_STEP = "DBOS.sleep"


def sleep(seconds: float) -> Coroutine[Any, Any, None]:
    """Durable sleep: inside a workflow the wake-up time is recorded first.

    A workflow recovered after a crash wakes at the originally recorded time,
    not ``seconds`` after its restart.
    """
    if not seconds >= 0:
        raise ValueError(f"sleep needs seconds >= 0, got {seconds!r}")
    ctx = current_workflow.get()
    if ctx is None or current_step_id.get() is not None:
        return asyncio.sleep(seconds)
    return _durable_sleep(ctx, ctx.take_step_id(), seconds)


async def _durable_sleep(ctx: WorkflowContext, step_id: int, seconds: float) -> None:
    wake_at = await record_wake_time(ctx, step_id, seconds)
    await anyio.sleep(max(0.0, wake_at - time.time()))


async def record_wake_time(
    ctx: WorkflowContext, step_id: int, seconds: float, *, wake_at: float | None = None
) -> float:
    """The epoch time ``seconds`` from now (or ``wake_at``), recorded as step ``step_id``.

    Returns what was recorded, by this call or an earlier execution. Durable
    sleeps and the timeouts of ``recv``/``get_event`` use it, so a recovered
    workflow keeps its original schedule. One round trip, none on replay.
    """
    recorded = ctx.recorded.get(step_id)
    if recorded is not None:
        check_replay(ctx, step_id, SLEEP_STEP, recorded)
        return float(serialization.decode(recorded.output))
    started = now_ms()
    mine = StepRecord(
        ctx.workflow_id,
        step_id,
        SLEEP_STEP,
        output=serialization.encode(time.time() + seconds if wake_at is None else wake_at),
        started_at=started,
        completed_at=started,
        fence=ctx.fence,
    )
    winner = await ctx.runtime.step_writer.submit(mine)
    return float(serialization.decode(winner.output))


def arm_timer(ctx: WorkflowContext, step_id: int, wake_at: float) -> asyncio.Future[float]:
    """Record ``wake_at`` as step ``step_id`` in the background; the future gives what won.

    The write belongs to the runtime's task group, not to the waiter, so a
    waiter that gets its message first does not wait for it.
    """
    armed: asyncio.Future[float] = asyncio.get_running_loop().create_future()

    async def record() -> None:
        # Never raises into the runtime's task group: the waiter gets the outcome.
        try:
            armed.set_result(await record_wake_time(ctx, step_id, 0, wake_at=wake_at))
        except anyio.get_cancelled_exc_class():
            armed.cancel()
            raise
        except BaseException as exc:  # a lost database, or FencedOff
            armed.set_exception(exc)
            armed.exception()  # marked retrieved: a waiter that got its message never asks

    ctx.runtime.workflow_group.start_soon(record)
    return armed
