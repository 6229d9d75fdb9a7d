"""``@DBOS.step`` and durable ``DBOS.sleep``: checkpointed units of work inside workflows.

A fresh step costs one round trip: its checkpoint write, group-committed with
the checkpoints of other workflows' steps. Recorded steps were read once when
the workflow (re)started, so replaying a step reads nothing. The protocol
(identity, replay, recording) is ``checkpoint.py``'s.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar, cast, overload

import anyio

from dbos_async import checkpoint, observers, registry, serialization
from dbos_async.clock import Wake
from dbos_async.context import WorkflowContext, current_step_id
from dbos_async.errors import DatabaseUnavailableError, MaxStepRetriesExceeded, SerializationError
from dbos_async.logs import get_logger
from dbos_async.systemdb.steps import StepRecord

if TYPE_CHECKING:
    from dbos_async.runtime import Runtime

P = ParamSpec("P")
R = TypeVar("R")

StepDecorator = Callable[[Callable[P, Any]], Callable[P, Coroutine[Any, Any, Any]]]


logger = get_logger(__name__)


def step(
    name: str | None = None,
    retries_allowed: bool = False,
    max_attempts: int = 3,
    interval_seconds: float = 1.0,
    backoff_rate: float = 2.0,
) -> _StepDecorator:
    """Declare a step: its outcome is checkpointed, and replay returns it without running it.

    Args:
        name: The registered name (default: ``module.qualname``).
        retries_allowed: Run the body again when it raises, up to
            ``max_attempts`` runs in all, then raise ``MaxStepRetriesExceeded``.
        max_attempts: Runs in all, with ``retries_allowed``.
        interval_seconds: The wait before the first retry.
        backoff_rate: Each later wait is this many times the one before.

    A plain ``def`` runs in a worker thread. Called outside a workflow (or
    inside a step) the function runs once, as a plain call.

    Raises:
        ValueError: ``max_attempts`` < 1, ``interval_seconds`` < 0 or
            ``backoff_rate`` <= 0.
    """
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
            # Taken now, before any await: see checkpoint.take.
            call = checkpoint.take(entry.name)
            if call is None:
                # Outside a workflow, or nested in a step: a plain call, run once,
                # without the retry policy (the enclosing step's own applies).
                return _call_body(entry, args, kwargs, None)
            return _run_step(call, entry, args, kwargs)

        wrapper.__dbos_entry__ = entry  # type: ignore[attr-defined]
        entry.options["wrapper"] = wrapper  # an enqueued step runs through it
        return wrapper


async def _run_step(
    call: checkpoint.Call,
    entry: registry.Registered,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> Any:
    with call:
        found = await checkpoint.replay(call) if call.recorded is not None else None
        if found is not None:
            return outcome(entry, found)
        started = call.ctx.runtime.clock.now_ms()
        token = current_step_id.set(call.step_id)
        seen = step_event(call, entry.name, "step") if call.ctx.event is not None else None
        try:
            value, attempts = await _run_body(entry, args, kwargs, call.ctx, seen)
        except Exception as exc:
            # It raises only once every attempt has failed.
            if seen is not None:
                tell_step_end(call.ctx, seen, exc, entry.options["attempts"], None)
            return await failed(call, entry, exc, started, entry.options["attempts"])
        except BaseException:
            if seen is not None:  # cancelled, or the runtime stops: no outcome
                tell_step_end(call.ctx, seen, None, 0, None, interrupted=True)
            raise
        finally:
            current_step_id.reset(token)
        try:
            output = serialization.encode(value, f"the result of step {entry.name}")
        except SerializationError as exc:
            # The body ran: its error is recorded like any other, so replay
            # raises it without running the body again.
            if seen is not None:
                tell_step_end(call.ctx, seen, exc, attempts, None)
            return await failed(call, entry, exc, started, attempts)
        if seen is not None:
            tell_step_end(call.ctx, seen, None, attempts, value)
        found = await checkpoint.record(call, output=output, started_at=started, attempts=attempts)
        # Another execution of this workflow recorded the step first: its outcome stands.
        return value if found is None else outcome(entry, found)


async def failed(
    call: checkpoint.Call,
    entry: registry.Registered,
    exc: Exception,
    started: int,
    attempts: int | None = None,
) -> Any:
    """Record the body's error as the call's outcome and raise it again.

    ``attempts``: how many times the body ran (None: the call has no body).

    If an earlier execution recorded the call first, its outcome stands instead.

    Raises:
        DatabaseUnavailableError: the body lost a database connection. That is
            no outcome: nothing is recorded, and the workflow replays from its
            records once the database answers, running the body again.
    """
    if checkpoint.is_outage(exc):
        if isinstance(exc, DatabaseUnavailableError):
            raise exc
        raise DatabaseUnavailableError(
            f"Step {entry.name!r} lost its database connection: {exc!r}"
        ) from exc
    error = serialization.encode_exception(exc)
    found = await checkpoint.record(call, error=error, started_at=started, attempts=attempts)
    if found is None:
        raise exc
    return outcome(entry, found)


def outcome(entry: registry.Registered, found: StepRecord) -> Any:
    """Return (or raise) a recorded step outcome without running the body."""
    if found.error is not None:
        raise serialization.decode_exception(found.error)
    annotation = serialization.return_annotation(entry.fn)
    return serialization.decode(found.output, annotation, strict=True)


def step_event(call: checkpoint.Call, name: str, kind: str) -> observers.StepEvent | None:
    """The observers' event for a call that runs its body (None: nobody observes)."""
    ctx = call.ctx
    if ctx.event is None:
        return None
    return observers.StepEvent(ctx.event, call.step_id, call.branch, name, kind)


def tell_step_end(
    ctx: WorkflowContext,
    seen: observers.StepEvent,
    error: BaseException | None,
    attempts: int,
    value: Any,
    *,
    interrupted: bool = False,
) -> None:
    """Tell the observers a step ended: SUCCESS, ERROR with ``error``, or cut short.

    ``interrupted``: the workflow was cancelled (CANCELLED) or its runtime
    stops (STOPPED) while the step ran.
    """
    if interrupted:
        status = observers.STOPPED if ctx.runtime.stopping else observers.CANCELLED
    elif error is not None and checkpoint.is_outage(error):
        status = observers.STOPPED  # a lost database is no outcome: it runs again
    else:
        status = observers.SUCCESS if error is None else observers.ERROR
    observers.notify(ctx.runtime.observers, "step_finished", seen, status, error, attempts, value)


async def _run_body(
    entry: registry.Registered,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    ctx: WorkflowContext,
    seen: observers.StepEvent | None = None,
) -> tuple[Any, int]:
    """Run the body of a checkpointed step with its retry policy: its value, and the runs it took.

    Raises:
        MaxStepRetriesExceeded: every one of the step's retries failed.
        Exception: what the body raised (a step without retries), or an outage.
    """
    if ctx.runtime.step_overrides:  # a test replaced some step bodies (override_step)
        entry = ctx.runtime.step_overrides.get(entry.name, entry)
    options = entry.options
    attempts = options["attempts"]
    last: Exception | None = None
    for attempt in range(attempts):
        if attempt:
            await ctx.runtime.clock.sleep(
                options["interval"] * options["backoff"] ** (attempt - 1), Wake.WORK
            )
        if seen is not None:
            observers.notify(ctx.runtime.observers, "step_started", seen, attempt + 1)
        try:
            if options["is_async"]:  # inline: every async step's path
                ctx.runtime.bodies_running += 1
                try:
                    return await entry.fn(*args, **kwargs), attempt + 1
                finally:
                    ctx.runtime.bodies_running -= 1
            return await _call_body(entry, args, kwargs, ctx.runtime), attempt + 1
        except Exception as exc:
            last = exc
            if attempt + 1 < attempts and seen is not None:
                delay = options["interval"] * options["backoff"] ** attempt
                observers.notify(
                    ctx.runtime.observers, "step_retried", seen, attempt + 1, exc, delay
                )
            if attempt + 1 < attempts:
                logger.warning(
                    "step %s of workflow %s failed on attempt %d of %d (%r); retrying in %gs",
                    entry.name,
                    ctx.workflow_id,
                    attempt + 1,
                    attempts,
                    exc,
                    options["interval"] * options["backoff"] ** attempt,
                    extra={"action": "step_retry", "workflow_id": ctx.workflow_id},
                )
    assert last is not None
    if options["retries_allowed"] and not checkpoint.is_outage(last):  # no outcome: see failed
        raise MaxStepRetriesExceeded(entry.name, options["attempts"], last) from last
    raise last


def _call_body(
    entry: registry.Registered,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    runtime: Runtime | None,
) -> Coroutine[Any, Any, Any]:
    """Run the body once; a sync body goes to a worker thread.

    ``runtime``: the workflow's (None: a plain call outside any workflow).
    """
    if entry.options["is_async"]:
        return cast(Coroutine[Any, Any, Any], entry.fn(*args, **kwargs))
    if runtime is None:
        return anyio.to_thread.run_sync(functools.partial(entry.fn, *args, **kwargs))
    # A thread cannot be interrupted: on cancellation the workflow moves on at
    # once and the body finishes unrecorded in the background (counted, so a
    # shutdown knows it is still running).
    return anyio.to_thread.run_sync(
        functools.partial(runtime.body_threads.run, entry.fn, *args, **kwargs),
        limiter=runtime.thread_limiter,
        abandon_on_cancel=True,
    )


def sleep(seconds: float) -> Coroutine[Any, Any, None]:
    """Durable sleep: inside a workflow the wake-up time is recorded first.

    A workflow recovered after a crash wakes at the originally recorded time,
    not ``seconds`` after its restart.
    """
    if not seconds >= 0:
        raise ValueError(f"sleep needs seconds >= 0, got {seconds!r}")
    call = checkpoint.take(checkpoint.SLEEP_STEP)
    if call is None:
        return asyncio.sleep(seconds)
    return _durable_sleep(call, seconds)


async def _durable_sleep(call: checkpoint.Call, seconds: float) -> None:
    with call:
        wake_at = await checkpoint.wake_time(call, seconds)
        if call.ctx.checking:  # a replay check does not wait out recorded sleeps
            return
        ctx = call.ctx
        if ctx.event is None:
            await ctx.runtime.clock.sleep_until(wake_at, Wake.WORK)
            return
        wait = observers.WaitEvent(ctx.event, "sleep", call.step_id, call.branch, wake_at)
        observers.notify(ctx.runtime.observers, "wait_started", wait)
        woke = False
        try:
            await ctx.runtime.clock.sleep_until(wake_at, Wake.WORK)
            woke = True
        finally:
            observers.notify(ctx.runtime.observers, "wait_finished", wait, woke)
