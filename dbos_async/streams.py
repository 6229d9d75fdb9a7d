"""Streams: ``write_stream``/``close_stream`` from a workflow, ``read_stream`` from anywhere.

A write is a checkpoint of the writing workflow, so replay writes nothing.
Its entry takes the stream's next offset; a workflow's writes go one at a
time (its branches may write concurrently), so offsets are gapless and
commit in order, and a reader that has seen offset n never misses n - 1. Readers
wait on ``s:<id>`` (writes) and ``w:<id>`` (the workflow finished). A busy
stream announces at most once per ``ANNOUNCE_WINDOW``: a write inside the
window skips its NOTIFY and the runtime sends one trailing NOTIFY at the end
of the window, so readers fetch many entries per wake-up instead of one
notification per value.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Coroutine
from typing import TYPE_CHECKING, Any

import anyio

from dbos_async import checkpoint, serialization
from dbos_async.errors import NotInWorkflowError, WorkflowNotFoundError
from dbos_async.logs import get_logger
from dbos_async.models import WorkflowStatusString
from dbos_async.systemdb import streams as streams_table
from dbos_async.systemdb.pool import run_idempotent
from dbos_async.validation import check_identifier, check_workflow_id

if TYPE_CHECKING:
    from dbos_async.handle import HandleSource
    from dbos_async.runtime import Runtime

logger = get_logger(__name__)

ANNOUNCE_WINDOW = 0.02
"""Seconds: a stream is announced at most once per window (plus one trailing announcement)."""

WRITE_STEP = "DBOS.write_stream"
CLOSE_STEP = "DBOS.close_stream"


class Announcer:
    """Per-runtime memory of when each workflow's streams were last announced."""

    def __init__(self) -> None:
        self._last: dict[str, float] = {}
        self._trailing: set[str] = set()

    @property
    def pending(self) -> bool:
        """Whether a trailing announcement is still to be sent (Runtime.busy)."""
        return bool(self._trailing)

    def announce_now(self, workflow_id: str) -> bool:
        """Whether a write may NOTIFY itself (the window since the last one has passed)."""
        now = time.monotonic()
        last = self._last.get(workflow_id)
        if last is not None and now - last < ANNOUNCE_WINDOW:
            return False
        if len(self._last) > 10_000:  # forget quiet streams
            self._last = {k: t for k, t in self._last.items() if now - t < ANNOUNCE_WINDOW}
        self._last[workflow_id] = now
        return True

    def announce_later(self, runtime: Runtime, workflow_id: str) -> None:
        """Schedule the trailing announcement for a write that skipped its own."""
        if workflow_id not in self._trailing:
            self._trailing.add(workflow_id)
            runtime.workflow_group.start_soon(self._trail, runtime, workflow_id)

    async def _trail(self, runtime: Runtime, workflow_id: str) -> None:
        try:
            last = self._last.get(workflow_id, 0.0)
            await anyio.sleep(max(0.0, last + ANNOUNCE_WINDOW - time.monotonic()))
            self._trailing.discard(workflow_id)
            self._last[workflow_id] = time.monotonic()
            async with runtime.connection() as conn:
                await streams_table.notify_stream(conn, workflow_id)
        except Exception as exc:  # readers' safety net still wakes them
            logger.warning("stream announcement failed: %r", exc, extra={"action": "announce"})
        finally:
            self._trailing.discard(workflow_id)


def write_stream(key: str, value: Any) -> Coroutine[Any, Any, None]:
    """Append ``value`` to this workflow's stream ``key``; exactly once across replays.

    Raises:
        NotInWorkflowError: called outside a workflow (or inside a step).
    """
    check_identifier(key, "stream key")
    encoded = serialization.encode(value, f"the value written to stream {key!r}")
    return _write(_take(WRITE_STEP, "write_stream"), key, encoded, close=False)


def close_stream(key: str) -> Coroutine[Any, Any, None]:
    """Close this workflow's stream ``key``: readers end after its last value."""
    check_identifier(key, "stream key")
    return _write(_take(CLOSE_STEP, "close_stream"), key, None, close=True)


def _take(name: str, what: str) -> checkpoint.Call:
    call = checkpoint.take(name)
    if call is None:
        raise NotInWorkflowError(f"DBOS.{what} is only available inside a workflow")
    return call


async def _write(call: checkpoint.Call, key: str, value: str | None, *, close: bool) -> None:
    with call:
        if call.recorded is not None:
            await checkpoint.replay(call)
            return
        ctx = call.ctx
        runtime = ctx.runtime
        await checkpoint.settle(ctx)
        if ctx.stream_lock is None:
            ctx.stream_lock = asyncio.Lock()
        async with ctx.stream_lock:
            announcer = runtime.stream_announcer
            notify = close or announcer.announce_now(ctx.workflow_id)
            await run_idempotent(
                runtime.pool,
                lambda conn: streams_table.write_stream(
                    conn, key, value, call.row(), close=close, notify=notify
                ),
            )
        if not notify:
            announcer.announce_later(runtime, ctx.workflow_id)


async def read_stream(runtime: HandleSource, workflow_id: str, key: str) -> AsyncIterator[Any]:
    """The values of a workflow's stream, as they are written.

    Ends when the stream is closed or the workflow has finished.

    Raises:
        WorkflowNotFoundError: no workflow has this ID.
    """
    check_workflow_id(workflow_id)
    check_identifier(key, "stream key")
    after = -1
    with runtime.listener.watch_many(("s", workflow_id), ("w", workflow_id)) as changed:
        while True:
            async with runtime.connection() as conn:
                status, entries = await streams_table.read_stream(conn, workflow_id, key, after)
            if status is None:
                raise WorkflowNotFoundError(workflow_id)
            for entry in entries:
                if entry.closed:
                    return
                yield serialization.decode(entry.value)
                after = entry.offset
            if not entries and WorkflowStatusString(status).is_terminal:
                return
            await changed.wait()
