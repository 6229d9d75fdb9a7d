"""``@DBOS.transaction``: the body and its checkpoint commit in one Postgres transaction.

If the checkpoint row already exists (another execution committed this
transaction first), inserting it fails, the whole transaction rolls back, and
the recorded outcome is returned instead: the body's effects commit exactly once.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Coroutine
from typing import Any, Literal, ParamSpec, TypeVar, cast

import asyncpg

from dbos_async import registry, serialization
from dbos_async.context import (
    WorkflowContext,
    current_connection,
    current_step_id,
    current_workflow,
)
from dbos_async.runtime import active_runtime
from dbos_async.step import replay
from dbos_async.systemdb import steps
from dbos_async.systemdb.pool import RETRYABLE_ERRORS, Connection, acquire
from dbos_async.systemdb.steps import StepRecord
from dbos_async.workflow import now_ms

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
    """Declare a transaction (see ``DBOS.transaction``)."""
    if isolation not in _ISOLATION:
        raise ValueError(f"isolation must be one of {sorted(_ISOLATION)}, got {isolation!r}")

    def decorator(fn: Callable[P, Coroutine[Any, Any, R]]) -> Callable[P, Coroutine[Any, Any, R]]:
        if not inspect.iscoroutinefunction(fn):
            raise TypeError(f"@DBOS.transaction needs an async def function, got {fn!r}")
        entry = registry.register("transaction", fn, name, isolation=_ISOLATION[isolation])

        @functools.wraps(fn)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> Coroutine[Any, Any, R]:
            ctx = current_workflow.get()
            if ctx is None or current_step_id.get() is not None:
                return cast(Coroutine[Any, Any, R], _run(entry, args, kwargs, None, None))
            step_id = ctx.take_step_id()  # at call time, for deterministic IDs
            return cast(Coroutine[Any, Any, R], _run(entry, args, kwargs, ctx, step_id))

        wrapper.__dbos_entry__ = entry  # type: ignore[attr-defined]
        entry.options["wrapper"] = wrapper  # an enqueued step runs through it
        return wrapper

    return decorator


async def _run(
    entry: registry.Registered,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    ctx: WorkflowContext | None,
    step_id: int | None,
) -> Any:
    if ctx is not None and step_id is not None:
        recorded = ctx.recorded.get(step_id)
        if recorded is not None:
            return replay(ctx, step_id, entry, recorded)
    runtime = ctx.runtime if ctx is not None else active_runtime()
    pool = await runtime.app_pool()
    started = now_ms()
    for attempt in range(_MAX_TRIES):
        try:
            async with acquire(pool) as conn:
                return await _attempt(conn, entry, args, kwargs, ctx, step_id, started)
        except RETRYABLE_ERRORS:
            if attempt == _MAX_TRIES - 1:
                raise
        except _AlreadyRecorded:
            break
        except Exception as exc:
            if ctx is None or step_id is None:
                raise
            # The body failed and rolled back; its error is the step's outcome.
            mine = StepRecord(
                ctx.workflow_id,
                step_id,
                entry.name,
                error=serialization.encode_exception(exc),
                started_at=started,
                completed_at=now_ms(),
                fence=ctx.fence,
            )
            winner = await runtime.step_writer.submit(mine)
            if winner is mine:
                raise
            return replay(ctx, step_id, entry, winner)
    assert ctx is not None and step_id is not None
    async with runtime.connection() as conn:
        recorded = await steps.select_step(conn, ctx.workflow_id, step_id)
    assert recorded is not None  # our insert conflicted with it
    return replay(ctx, step_id, entry, recorded)


async def _attempt(
    conn: Connection,
    entry: registry.Registered,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    ctx: WorkflowContext | None,
    step_id: int | None,
    started: int,
) -> Any:
    async with conn.transaction(isolation=entry.options["isolation"]):
        conn_token = current_connection.set(conn)
        step_token = current_step_id.set(step_id if step_id is not None else -1)
        try:
            value = await entry.fn(*args, **kwargs)
        finally:
            current_connection.reset(conn_token)
            current_step_id.reset(step_token)
        if ctx is None or step_id is None:
            return value
        output = serialization.encode(value, f"the result of transaction {entry.name}")
        try:
            await steps.insert_step(
                conn,
                StepRecord(
                    ctx.workflow_id,
                    step_id,
                    entry.name,
                    output=output,
                    started_at=started,
                    completed_at=now_ms(),
                    fence=ctx.fence,
                ),
            )
        except asyncpg.UniqueViolationError as exc:
            raise _AlreadyRecorded from exc
    return value
