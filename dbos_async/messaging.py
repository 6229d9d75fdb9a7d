"""Messages (``send``/``recv``) and events (``set_event``/``get_event``).

Inside a workflow each call is a checkpoint whose step ID is taken when it is
called (these functions are not ``async`` themselves, so the ID is taken
before the first ``await``). A write and its checkpoint are one statement, so
a replayed ``send`` or ``set_event`` writes nothing. ``recv`` consumes a
message and records it in one statement too: it receives each message exactly
once, and replay returns the recorded message. Waiters sleep on the listener
(``m:<id>``, ``e:<id>``) and re-read after each wake-up; the timeouts of
``recv`` and of ``get_event`` inside a workflow are recorded like a durable
sleep, so a recovered workflow keeps its original deadline.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import TYPE_CHECKING, Any

from dbos_async import context, serialization
from dbos_async.context import FencedOff, WorkflowContext
from dbos_async.errors import NotInWorkflowError, WorkflowNotFoundError
from dbos_async.notifications import Watch
from dbos_async.step import SLEEP_STEP, arm_timer
from dbos_async.systemdb import messages as msg_table
from dbos_async.systemdb import steps as steps_table
from dbos_async.systemdb.pool import run_idempotent
from dbos_async.systemdb.steps import StepRecord
from dbos_async.validation import check_identifier, check_workflow_id
from dbos_async.workflow import check_replay, now_ms

if TYPE_CHECKING:
    from dbos_async.handle import HandleSource

RECV_STEP = "DBOS.recv"
GET_EVENT_STEP = "DBOS.get_event"
GET_ALL_EVENTS_STEP = "DBOS.get_all_events"
SEND_STEP = "DBOS.send"
SET_EVENT_STEP = "DBOS.set_event"


def in_workflow() -> WorkflowContext | None:
    """The current workflow, unless we are inside one of its steps (those are not replayed)."""
    ctx = context.current_workflow.get()
    return ctx if ctx is not None and context.current_step_id.get() is None else None


def _topic(topic: str | None) -> str:
    # '' stands for "no topic" in the table, so a real topic must be non-empty.
    return "" if topic is None else check_identifier(topic, "topic")


def _check_timeout(timeout_seconds: float) -> float:
    if not timeout_seconds >= 0:
        raise ValueError(f"timeout_seconds must be >= 0, got {timeout_seconds!r}")
    return float(timeout_seconds)


# -- send / recv ------------------------------------------------------------------------


def send(
    source: HandleSource | None, destination_id: str, message: Any, topic: str | None = None
) -> Coroutine[Any, Any, None]:
    """Send ``message`` to a workflow; exactly once from a workflow, even across replays.

    Outside a workflow, an ID set with ``SetWorkflowID`` is the send's
    idempotency key. The message is encoded before anything is written.
    """
    from dbos_async.runtime import active_runtime

    check_workflow_id(destination_id)
    topic_key = _topic(topic)
    payload = serialization.encode(message, "the message")
    ctx = in_workflow()
    if ctx is not None:
        return _send_from_workflow(ctx, ctx.take_step_id(), destination_id, topic_key, payload)
    key = context.take_next_workflow_id()
    return _send(source or active_runtime(), destination_id, topic_key, payload, key)


async def _send_from_workflow(
    ctx: WorkflowContext, step_id: int, destination_id: str, topic: str, payload: str
) -> None:
    recorded = ctx.recorded.get(step_id)
    if recorded is not None:
        check_replay(ctx, step_id, SEND_STEP, recorded)
        return
    here = _runs_here(ctx.runtime, destination_id)
    exists = await run_idempotent(
        ctx.runtime.pool,
        lambda conn: msg_table.send_message_from_workflow(
            conn,
            destination_id,
            topic,
            payload,
            now_ms(),
            ctx.workflow_id,
            step_id,
            ctx.fence,
            notify=not here,
        ),
    )
    if not exists:
        raise _no_destination(destination_id)
    if here:
        ctx.runtime.listener.fire("m", destination_id)


def _runs_here(source: HandleSource, workflow_id: str) -> bool:
    """Whether a workflow runs in this process, which then wakes it without a NOTIFY."""
    running = source.local.get(workflow_id)
    return running is not None and running.ctx is not None


async def _send(
    runtime: HandleSource, destination_id: str, topic: str, payload: str, key: str | None
) -> None:
    here = _runs_here(runtime, destination_id)

    async def statement(conn: Any) -> bool:
        return await msg_table.send_message(
            conn, destination_id, topic, payload, now_ms(), key, notify=not here
        )

    if key is not None:  # idempotent: safe to send again after a lost acknowledgement
        exists = await run_idempotent(runtime.pool, statement)
    else:
        async with runtime.connection() as conn:
            exists = await statement(conn)
    if not exists:
        raise _no_destination(destination_id)
    if here:
        runtime.listener.fire("m", destination_id)


def _no_destination(destination_id: str) -> WorkflowNotFoundError:
    return WorkflowNotFoundError(
        destination_id, f"Cannot send to {destination_id!r}: no workflow has this ID"
    )


def recv(topic: str | None = None, timeout_seconds: float = 60) -> Coroutine[Any, Any, Any]:
    """The next message on ``topic`` sent to this workflow, or None after the timeout.

    Raises:
        NotInWorkflowError: called outside a workflow (or inside a step).
    """
    ctx = in_workflow()
    if ctx is None:
        raise NotInWorkflowError("DBOS.recv is only available inside a workflow")
    topic_key = _topic(topic)
    timeout = _check_timeout(timeout_seconds)
    # Two IDs, taken now: the received message, and the recorded deadline.
    return _recv(ctx, ctx.take_step_id(), ctx.take_step_id(), topic_key, timeout)


async def _recv(
    ctx: WorkflowContext, step_id: int, timer_id: int, topic: str, wait_seconds: float
) -> Any:
    recorded = ctx.recorded.get(step_id)
    if recorded is not None:
        check_replay(ctx, step_id, RECV_STEP, recorded)
        return serialization.decode(recorded.output)
    runtime, wid = ctx.runtime, ctx.workflow_id

    async def consume() -> tuple[bool, Any]:
        try:
            payload = await run_idempotent(
                runtime.pool,
                lambda conn: msg_table.receive_message(
                    conn, wid, topic, step_id, now_ms(), ctx.fence
                ),
            )
        except msg_table.AlreadyRecorded:
            return True, await _recorded_outcome(ctx, step_id, RECV_STEP)
        return payload is not None, serialization.decode(payload)

    with runtime.listener.watch("m", wid) as arrived:
        found, value = await durable_wait(ctx, timer_id, wait_seconds, arrived, consume)
    if found:
        return value
    return await _record_value(ctx, step_id, RECV_STEP, None)


async def durable_wait(
    ctx: WorkflowContext,
    timer_id: int,
    seconds: float,
    watch: Watch,
    attempt: Callable[[], Awaitable[tuple[bool, Any]]],
) -> tuple[bool, Any]:
    """Call ``attempt`` until it finds something or the durable deadline passes.

    The deadline (now + ``seconds``, or what an earlier execution recorded at
    ``timer_id``) is recorded in the background: a message that arrives
    meanwhile is not delayed by that write, and the deadline is only acted on
    once it is durable. Returns ``(False, None)`` at the deadline.
    """
    found, value = await attempt()
    if found:
        return found, value
    recorded = ctx.recorded.get(timer_id)
    armed: asyncio.Future[float] | None = None
    if recorded is not None:
        check_replay(ctx, timer_id, SLEEP_STEP, recorded)
        wake_at = float(serialization.decode(recorded.output))
    else:
        wake_at = time.time() + seconds
        armed = arm_timer(ctx, timer_id, wake_at)
    while True:
        left = wake_at - time.time()
        if left <= 0:
            if armed is None:
                return False, None
            # Act on the deadline only once it is recorded (an earlier execution's wins).
            wake_at, armed = await asyncio.shield(armed), None
            continue
        await watch.wait(left)
        found, value = await attempt()
        if found:
            return found, value


async def _recorded_outcome(ctx: WorkflowContext, step_id: int, name: str) -> Any:
    """The value an earlier execution recorded for this step."""
    async with ctx.runtime.connection() as conn:
        recorded = await steps_table.select_step(conn, ctx.workflow_id, step_id)
    if recorded is None:  # our statement wrote nothing and nobody else did: we are fenced off
        raise FencedOff(ctx.workflow_id)
    check_replay(ctx, step_id, name, recorded)
    return serialization.decode(recorded.output)


async def _record_value(ctx: WorkflowContext, step_id: int, name: str, value: Any) -> Any:
    """Record ``value`` as the step's outcome; returns the winner's value."""
    started = now_ms()
    mine = StepRecord(
        ctx.workflow_id,
        step_id,
        name,
        output=serialization.encode(value),
        started_at=started,
        completed_at=started,
        fence=ctx.fence,
    )
    winner = await ctx.runtime.step_writer.submit(mine)
    check_replay(ctx, step_id, name, winner)
    return value if winner is mine else serialization.decode(winner.output)


# -- events -----------------------------------------------------------------------------


def set_event(key: str, value: Any) -> Coroutine[Any, Any, None]:
    """Set an event of this workflow (the latest value wins); exactly once across replays.

    Raises:
        NotInWorkflowError: called outside a workflow (or inside a step).
    """
    ctx = in_workflow()
    if ctx is None:
        raise NotInWorkflowError("DBOS.set_event is only available inside a workflow")
    check_identifier(key, "event key")
    encoded = serialization.encode(value, f"the value of event {key!r}")
    return _set_event(ctx, ctx.take_step_id(), key, encoded)


async def _set_event(ctx: WorkflowContext, step_id: int, key: str, value: str) -> None:
    recorded = ctx.recorded.get(step_id)
    if recorded is not None:
        check_replay(ctx, step_id, SET_EVENT_STEP, recorded)
        return
    await run_idempotent(
        ctx.runtime.pool,
        lambda conn: msg_table.set_event(
            conn, ctx.workflow_id, step_id, key, value, now_ms(), ctx.fence
        ),
    )
    ctx.runtime.listener.fire("e", ctx.workflow_id)


def get_event(
    source: HandleSource | None, workflow_id: str, key: str, timeout_seconds: float = 60
) -> Coroutine[Any, Any, Any]:
    """The value of another workflow's event, waiting up to the timeout; None if unset.

    Inside a workflow the value it got (or None) is recorded, as is its deadline.
    """
    from dbos_async.runtime import active_runtime

    check_workflow_id(workflow_id)
    check_identifier(key, "event key")
    timeout = _check_timeout(timeout_seconds)
    ctx = in_workflow()
    if ctx is not None:
        return _get_event_in_workflow(
            ctx, ctx.take_step_id(), ctx.take_step_id(), workflow_id, key, timeout
        )
    return _get_event(source or active_runtime(), workflow_id, key, timeout)


async def _get_event(runtime: HandleSource, workflow_id: str, key: str, wait_seconds: float) -> Any:
    deadline = time.monotonic() + wait_seconds
    with runtime.listener.watch("e", workflow_id) as changed:
        while True:
            async with runtime.connection() as conn:
                value = await msg_table.select_event(conn, workflow_id, key)
            if value is not None:
                return serialization.decode(value)
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            await changed.wait(left)


async def _get_event_in_workflow(
    ctx: WorkflowContext,
    step_id: int,
    timer_id: int,
    workflow_id: str,
    key: str,
    wait_seconds: float,
) -> Any:
    recorded = ctx.recorded.get(step_id)
    if recorded is not None:
        check_replay(ctx, step_id, GET_EVENT_STEP, recorded)
        return serialization.decode(recorded.output)
    runtime = ctx.runtime

    async def read_and_record() -> tuple[bool, Any]:
        value, mine = await run_idempotent(
            runtime.pool,
            lambda conn: msg_table.record_event(
                conn, workflow_id, key, ctx.workflow_id, step_id, now_ms(), ctx.fence
            ),
        )
        if value is None:
            return False, None
        if not mine:
            return True, await _recorded_outcome(ctx, step_id, GET_EVENT_STEP)
        return True, serialization.decode(value)

    with runtime.listener.watch("e", workflow_id) as changed:
        found, value = await durable_wait(ctx, timer_id, wait_seconds, changed, read_and_record)
    if found:
        return value
    return await _record_value(ctx, step_id, GET_EVENT_STEP, None)


def get_all_events(
    source: HandleSource | None, workflow_id: str
) -> Coroutine[Any, Any, dict[str, Any]]:
    """Every event of a workflow with its latest value; recorded inside a workflow."""
    from dbos_async.runtime import active_runtime

    check_workflow_id(workflow_id)
    ctx = in_workflow()
    if ctx is not None:
        return _get_all_events_in_workflow(ctx, ctx.take_step_id(), workflow_id)
    return _get_all_events(source or active_runtime(), workflow_id)


async def _get_all_events(runtime: HandleSource, workflow_id: str) -> dict[str, Any]:
    async with runtime.connection() as conn:
        rows = await msg_table.select_events(conn, workflow_id)
    return {key: serialization.decode(value) for key, value in rows}


async def _get_all_events_in_workflow(
    ctx: WorkflowContext, step_id: int, workflow_id: str
) -> dict[str, Any]:
    recorded = ctx.recorded.get(step_id)
    if recorded is not None:
        check_replay(ctx, step_id, GET_ALL_EVENTS_STEP, recorded)
        events: dict[str, Any] = serialization.decode(recorded.output)
        return events
    events = await _get_all_events(ctx.runtime, workflow_id)
    recorded_events: dict[str, Any] = await _record_value(ctx, step_id, GET_ALL_EVENTS_STEP, events)
    return recorded_events
