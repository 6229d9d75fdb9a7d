"""Messages (``send``/``recv``) and events (``set_event``/``get_event``).

Inside a workflow each call is a checkpoint whose identity is taken when it is
called (these functions are not ``async`` themselves, so it is taken before
the first ``await``; see ``checkpoint.py``). A write and its checkpoint are
one statement, so a replayed ``send`` or ``set_event`` writes nothing.
``recv`` consumes a message and records it in one statement too: it receives
each message exactly once, and replay returns the recorded message. Waiters
sleep on the listener (``m:<id>``, ``e:<id>``) and re-read after each
wake-up; the timeouts of ``recv`` and of ``get_event`` inside a workflow are
recorded like a durable sleep, so a recovered workflow keeps its original
deadline.
"""

from __future__ import annotations

from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

from dbos_async import checkpoint, context, observers, serialization
from dbos_async.clock import REAL
from dbos_async.errors import DBOSError, NotInWorkflowError, WorkflowNotFoundError
from dbos_async.systemdb import messages as msg_table
from dbos_async.systemdb.pool import run_idempotent
from dbos_async.validation import check_identifier, check_workflow_id

if TYPE_CHECKING:
    from dbos_async.handle import HandleSource

RECV_STEP = "DBOS.recv"
GET_EVENT_STEP = "DBOS.get_event"
GET_ALL_EVENTS_STEP = "DBOS.get_all_events"
SEND_STEP = "DBOS.send"
SET_EVENT_STEP = "DBOS.set_event"
# The deadlines of recv and get_event are recorded as DBOS.sleep calls (replay
# checks that name, and an earlier release must still replay them) with these labels.
RECV_DEADLINE = "DBOS.recv deadline"
GET_EVENT_DEADLINE = "DBOS.get_event deadline"


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
    call = checkpoint.take(SEND_STEP)
    if call is not None:
        return _send_from_workflow(call, destination_id, topic_key, payload)
    key = context.take_next_workflow_id()
    return _send(source or active_runtime(), destination_id, topic_key, payload, key)


async def _send_from_workflow(
    call: checkpoint.Call, destination_id: str, topic: str, payload: str
) -> None:
    with call:
        if call.recorded is not None:
            await checkpoint.replay(call)
            return
        runtime = call.ctx.runtime
        await checkpoint.settle(call.ctx)
        here = _runs_here(runtime, destination_id)
        exists = await run_idempotent(
            runtime.pool,
            lambda conn: msg_table.send_message_from_workflow(
                conn,
                destination_id,
                topic,
                payload,
                call.row(),
                notify=not here,
            ),
        )
        if not exists:
            raise _no_destination(destination_id)
        if here:
            runtime.listener.fire("m", destination_id)


def _runs_here(source: HandleSource, workflow_id: str) -> bool:
    """Whether a workflow runs in this process, which then wakes it without a NOTIFY."""
    running = source.local.get(workflow_id)
    return running is not None and running.ctx is not None


async def _send(
    runtime: HandleSource, destination_id: str, topic: str, payload: str, key: str | None
) -> None:
    here = _runs_here(runtime, destination_id)
    # Scoped to the destination (length-prefixed, so no two pairs collide): the
    # same key may serve sends to different workflows.
    scoped = None if key is None else f"{len(destination_id)}:{destination_id}:{key}"

    async def statement(conn: Any) -> tuple[bool, bool | None]:
        return await msg_table.send_message(
            conn, destination_id, topic, payload, runtime.clock.now_ms(), scoped, notify=not here
        )

    if scoped is not None:  # idempotent: safe to send again after a lost acknowledgement
        exists, same = await run_idempotent(runtime.pool, statement)
    else:
        async with runtime.connection() as conn:
            exists, same = await statement(conn)
    if not exists:
        raise _no_destination(destination_id)
    if same is False:
        raise DBOSError(
            f"Idempotency key {key!r} already sent a different message to "
            f"{destination_id!r}: nothing was sent; use a new key for a new message"
        )
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
    topic_key = _topic(topic)
    timeout = _check_timeout(timeout_seconds)
    # Two calls, taken now: the received message, and the recorded deadline.
    call = checkpoint.take(RECV_STEP)
    if call is None:
        raise NotInWorkflowError("DBOS.recv is only available inside a workflow")
    timer = checkpoint.take(checkpoint.SLEEP_STEP)
    assert timer is not None
    return _recv(call, timer, topic_key, timeout)


async def _recv(
    call: checkpoint.Call, timer: checkpoint.Call, topic: str, wait_seconds: float
) -> Any:
    with call:
        found = await checkpoint.replay(call) if call.recorded is not None else None
        if found is not None:
            return serialization.decode(found.output)
        ctx = call.ctx
        runtime = ctx.runtime
        await checkpoint.settle(ctx)

        async def consume() -> tuple[bool, Any]:
            try:
                payload = await run_idempotent(
                    runtime.pool,
                    lambda conn: msg_table.receive_message(conn, topic, call.row()),
                )
            except msg_table.AlreadyRecorded:
                return True, serialization.decode((await checkpoint.fetch_recorded(call)).output)
            return payload is not None, serialization.decode(payload)

        wait = (
            observers.WaitEvent(
                ctx.event,
                "recv",
                call.step_id,
                call.branch,
                runtime.clock.time() + wait_seconds,
                topic,
            )
            if ctx.event is not None
            else None
        )
        if wait is not None:
            observers.notify(runtime.observers, "wait_started", wait)
        found_one = woke = False
        try:
            with runtime.listener.watch("m", ctx.workflow_id) as arrived:
                found_one, value = await checkpoint.durable_wait(
                    timer, wait_seconds, arrived, consume, RECV_DEADLINE
                )
            woke = True
        finally:
            if wait is not None:  # timed out: it woke with nothing (not: it was cut short)
                observers.notify(runtime.observers, "wait_finished", wait, woke and not found_one)
        if found_one:
            return value
        return await _record_value(call, None)


async def _record_value(call: checkpoint.Call, value: Any) -> Any:
    """Record ``value`` as the call's outcome; returns the winner's value."""
    found = await checkpoint.record(call, output=serialization.encode(value))
    return value if found is None else serialization.decode(found.output)


# -- events -----------------------------------------------------------------------------


def set_event(key: str, value: Any) -> Coroutine[Any, Any, None]:
    """Set an event of this workflow (the latest value wins); exactly once across replays.

    Raises:
        NotInWorkflowError: called outside a workflow (or inside a step).
    """
    check_identifier(key, "event key")
    encoded = serialization.encode(value, f"the value of event {key!r}")
    call = checkpoint.take(SET_EVENT_STEP)
    if call is None:
        raise NotInWorkflowError("DBOS.set_event is only available inside a workflow")
    return _set_event(call, key, encoded)


async def _set_event(call: checkpoint.Call, key: str, value: str) -> None:
    with call:
        if call.recorded is not None:
            await checkpoint.replay(call)
            return
        runtime = call.ctx.runtime
        await checkpoint.settle(call.ctx)
        await run_idempotent(
            runtime.pool, lambda conn: msg_table.set_event(conn, key, value, call.row())
        )
        runtime.listener.fire("e", call.ctx.workflow_id)


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
    call = checkpoint.take(GET_EVENT_STEP)
    if call is not None:
        timer = checkpoint.take(checkpoint.SLEEP_STEP)
        assert timer is not None
        return _get_event_in_workflow(call, timer, workflow_id, key, timeout)
    return _get_event(source or active_runtime(), workflow_id, key, timeout)


async def _get_event(runtime: HandleSource, workflow_id: str, key: str, wait_seconds: float) -> Any:
    # Outside a workflow the timeout is the caller's own wait, in real time (as
    # get_result's): a test on a virtual clock is not stuck until it moves.
    clock = REAL
    deadline = clock.monotonic() + wait_seconds
    with runtime.listener.watch("e", workflow_id) as changed:
        while True:
            async with runtime.connection() as conn:
                value = await msg_table.select_event(conn, workflow_id, key)
            if value is not None:
                return serialization.decode(value)
            left = deadline - clock.monotonic()
            if left <= 0:
                return None
            await changed.wait(left, clock)


async def _get_event_in_workflow(
    call: checkpoint.Call,
    timer: checkpoint.Call,
    workflow_id: str,
    key: str,
    wait_seconds: float,
) -> Any:
    with call:
        found = await checkpoint.replay(call) if call.recorded is not None else None
        if found is not None:
            return serialization.decode(found.output)
        runtime = call.ctx.runtime
        await checkpoint.settle(call.ctx)

        async def read_and_record() -> tuple[bool, Any]:
            value, mine = await run_idempotent(
                runtime.pool,
                lambda conn: msg_table.record_event(conn, workflow_id, key, call.row()),
            )
            if value is None:
                return False, None
            if not mine:
                return True, serialization.decode((await checkpoint.fetch_recorded(call)).output)
            return True, serialization.decode(value)

        with runtime.listener.watch("e", workflow_id) as changed:
            found_one, value = await checkpoint.durable_wait(
                timer, wait_seconds, changed, read_and_record, GET_EVENT_DEADLINE
            )
        if found_one:
            return value
        return await _record_value(call, None)


def get_all_events(
    source: HandleSource | None, workflow_id: str
) -> Coroutine[Any, Any, dict[str, Any]]:
    """Every event of a workflow with its latest value; recorded inside a workflow."""
    from dbos_async.runtime import active_runtime

    check_workflow_id(workflow_id)
    call = checkpoint.take(GET_ALL_EVENTS_STEP)
    if call is not None:
        return _get_all_events_in_workflow(call, workflow_id)
    return _get_all_events(source or active_runtime(), workflow_id)


async def _get_all_events(runtime: HandleSource, workflow_id: str) -> dict[str, Any]:
    async with runtime.connection() as conn:
        rows = await msg_table.select_events(conn, workflow_id)
    return {key: serialization.decode(value) for key, value in rows}


async def _get_all_events_in_workflow(call: checkpoint.Call, workflow_id: str) -> dict[str, Any]:
    with call:
        found = await checkpoint.replay(call) if call.recorded is not None else None
        if found is not None:
            events: dict[str, Any] = serialization.decode(found.output)
            return events
        events = await _get_all_events(call.ctx.runtime, workflow_id)
        recorded: dict[str, Any] = await _record_value(call, events)
        return recorded
