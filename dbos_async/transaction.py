"""``@DBOS.transaction``: the body and its checkpoint commit in one Postgres transaction.

If the checkpoint row already exists (another execution committed this
transaction first), inserting it fails, the whole transaction rolls back, and
the recorded outcome is returned instead: the body's effects commit exactly once.

That is also why a transaction that lost its connection (in its body, or at
COMMIT, which may or may not have happened) is simply run again: if it did
commit, the second run finds its checkpoint and rolls back. A lost connection
is never the transaction's outcome.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Coroutine
from typing import Any, Literal, ParamSpec, TypeVar, cast

import anyio
import asyncpg

from dbos_async import checkpoint, observers, registry, serialization
from dbos_async.context import current_connection, current_step_id
from dbos_async.errors import DatabaseUnavailableError
from dbos_async.runtime import active_runtime
from dbos_async.step import failed, outcome, step_event, tell_step_end
from dbos_async.systemdb import steps
from dbos_async.systemdb.pool import RETRY_DELAYS, RETRYABLE_ERRORS, Connection, acquire

P = ParamSpec("P")
R = TypeVar("R")

Isolation = Literal["read committed", "repeatable read", "serializable"]
_ISOLATION = {
    "read committed": "read_committed",
    "repeatable read": "repeatable_read",
    "serializable": "serializable",
}
_MAX_TRIES = 10


class _AlreadyRecorded(Exception):
    """Raised inside the transaction to roll it back when the checkpoint exists."""


def transaction(
    name: str | None = None, isolation: Isolation = "read committed"
) -> Callable[[Callable[P, Coroutine[Any, Any, R]]], Callable[P, Coroutine[Any, Any, R]]]:
    """Declare a transaction: its body and its checkpoint commit together, exactly once.

    Args:
        name: The registered name (default: ``module.qualname``).
        isolation: ``"read committed"``, ``"repeatable read"`` or ``"serializable"``;
            serialization failures and deadlocks are retried.

    ``DBOS.connection`` is the transaction's asyncpg connection inside the body.

    Raises:
        ValueError: an unknown ``isolation``.
        TypeError: the decorated function is not an ``async def``.
    """
    if isolation not in _ISOLATION:
        raise ValueError(f"isolation must be one of {sorted(_ISOLATION)}, got {isolation!r}")

    def decorator(fn: Callable[P, Coroutine[Any, Any, R]]) -> Callable[P, Coroutine[Any, Any, R]]:
        if not inspect.iscoroutinefunction(fn):
            raise TypeError(f"@DBOS.transaction needs an async def function, got {fn!r}")
        entry = registry.register("transaction", fn, name, isolation=_ISOLATION[isolation])

        @functools.wraps(fn)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> Coroutine[Any, Any, R]:
            call = checkpoint.take(entry.name)  # at call time, for deterministic IDs
            if call is None:
                return cast(Coroutine[Any, Any, R], _run_unrecorded(entry, args, kwargs))
            return cast(Coroutine[Any, Any, R], _run(call, entry, args, kwargs))

        wrapper.__dbos_entry__ = entry  # type: ignore[attr-defined]
        entry.options["wrapper"] = wrapper  # an enqueued step runs through it
        return wrapper

    return decorator


async def _run_unrecorded(
    entry: registry.Registered, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    """Outside a workflow (or inside a step): just a transaction, retried on conflicts.

    Not after a lost connection: without a checkpoint to find, running it
    again after a COMMIT whose acknowledgement was lost would commit it twice.
    """
    pool = await active_runtime().app_pool()
    for attempt in range(_MAX_TRIES):
        try:
            async with acquire(pool) as conn:
                return await _attempt(conn, entry, args, kwargs, None, 0)
        except RETRYABLE_ERRORS:
            if attempt == _MAX_TRIES - 1:
                raise
    raise AssertionError("unreachable")


async def _run(
    call: checkpoint.Call,
    entry: registry.Registered,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> Any:
    with call:
        found = await checkpoint.replay(call) if call.recorded is not None else None
        if found is not None:
            return outcome(entry, found)
        if call.ctx.event is None:
            return await _run_live(call, entry, args, kwargs)
        seen = step_event(call, entry.name, "transaction")
        assert seen is not None
        observers.notify(call.ctx.runtime.observers, "step_started", seen, 1)
        try:
            value = await _run_live(call, entry, args, kwargs)
        except Exception as exc:
            tell_step_end(call.ctx, seen, exc, 1, None)
            raise
        except BaseException:
            tell_step_end(call.ctx, seen, None, 0, None, interrupted=True)
            raise
        tell_step_end(call.ctx, seen, None, 1, value)
        return value


async def _run_live(
    call: checkpoint.Call,
    entry: registry.Registered,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> Any:
    """Run the transaction's body (again after a conflict) and record it with it."""
    runtime = call.ctx.runtime
    await checkpoint.settle(call.ctx)  # interruptions before this commit's checkpoint
    pool = await runtime.app_pool()
    started = runtime.clock.now_ms()
    conflicts = 0
    lost = iter(RETRY_DELAYS)
    while True:
        try:
            async with acquire(pool) as conn:
                return await _attempt(conn, entry, args, kwargs, call, started)
        except RETRYABLE_ERRORS:
            conflicts += 1
            if conflicts == _MAX_TRIES:
                raise
        except _AlreadyRecorded:
            break
        except DatabaseUnavailableError:
            # Not an outcome: run it again (see the module docstring). If the
            # database stays away, nothing is recorded and the workflow
            # replays once it answers.
            delay = next(lost, None)
            if delay is None:
                raise
            await anyio.sleep(delay)
        except Exception as exc:
            # The body failed and rolled back; its error is the step's outcome.
            return await failed(call, entry, exc, started)
    # Our insert conflicted with an earlier execution's checkpoint.
    return outcome(entry, await checkpoint.fetch_recorded(call))


async def _attempt(
    conn: Connection,
    entry: registry.Registered,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    call: checkpoint.Call | None,
    started: int,
) -> Any:
    async with conn.transaction(isolation=entry.options["isolation"]):
        conn_token = current_connection.set(conn)
        step_token = current_step_id.set(call.step_id if call is not None else -1)
        try:
            value = await entry.fn(*args, **kwargs)
        finally:
            current_connection.reset(conn_token)
            current_step_id.reset(step_token)
        if call is None:
            return value
        output = serialization.encode(value, f"the result of transaction {entry.name}")
        try:
            await steps.insert_step(conn, call.row(output=output, started_at=started))
        except asyncpg.UniqueViolationError as exc:
            raise _AlreadyRecorded from exc
    return value
