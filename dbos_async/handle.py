"""``WorkflowHandle`` and the reads behind it, for a runtime and a client alike.

A handle reads through a ``HandleSource``: the ``Runtime`` that started the
workflow (which awaits its own workflows in-process), or a ``DBOSClient``
(which runs nothing and waits for the ``w:<id>`` notification).
Results of workflows not registered in this process decode as plain JSON.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar, Union

import anyio

from dbos_async import checkpoint, registry, serialization
from dbos_async.branches import current_branch, outside
from dbos_async.errors import (
    DatabaseUnavailableError,
    MaxRecoveryAttemptsExceededError,
    NonDeterministicWorkflowError,
    WorkflowCancelledError,
    WorkflowNotFoundError,
)
from dbos_async.logs import get_logger
from dbos_async.models import WorkflowStatus, WorkflowStatusString
from dbos_async.systemdb import workflows as wf_table
from dbos_async.validation import check_workflow_id

if TYPE_CHECKING:
    from dbos_async.clock import Clock
    from dbos_async.context import Running
    from dbos_async.notifications import Listener
    from dbos_async.systemdb.pool import Pool, PooledConnection

logger = get_logger(__name__)

R = TypeVar("R")


class HandleSource(Protocol):
    """What a WorkflowHandle reads through: a ``Runtime``, or a ``DBOSClient``.

    A runtime awaits the workflows it runs itself (``local``) and reads the
    others' rows when their ``w:<id>`` notification arrives; a client runs
    nothing, so its ``local`` is always empty.
    """

    @property
    def local(self) -> Mapping[str, Running]:
        """The workflows running in this process, by ID."""
        ...

    @property
    def listener(self) -> Listener:
        """The notification listener whose ``watch("w", id)`` wakes waiters."""
        ...

    @property
    def pool(self) -> Pool:
        """The system-database pool (for statements retried after a lost connection)."""
        ...

    def connection(self) -> AbstractAsyncContextManager[PooledConnection]:
        """A pooled system-database connection."""
        ...

    @property
    def clock(self) -> Clock:
        """The time its waits are measured on."""
        ...


class WorkflowHandle(Generic[R]):
    """A started workflow: wait for its result or read its status."""

    __slots__ = ("_source", "workflow_id")

    def __init__(self, source: HandleSource, workflow_id: str) -> None:
        self._source = source
        self.workflow_id = workflow_id

    def __repr__(self) -> str:
        return f"WorkflowHandle({self.workflow_id!r})"

    async def get_result(self, timeout: float | None = None) -> R:  # noqa: ASYNC109 - API
        """The workflow's result, or its recorded error re-raised.

        Raises:
            TimeoutError: ``timeout`` seconds passed first (the workflow goes on).
            WorkflowCancelledError: the workflow was cancelled.
        """
        with anyio.fail_after(timeout):
            if current_branch.get() is None:
                result: R = await await_result(self._source, self.workflow_id)
            else:
                # What the read does internally must take no position in the
                # awaiting workflow's branches (see branches.outside).
                with outside():
                    result = await await_result(self._source, self.workflow_id)
        return result

    async def get_status(self) -> WorkflowStatus:
        """The workflow's recorded status."""
        with outside():
            status = await get_workflow_status(self._source, self.workflow_id)
        if status is None:
            raise WorkflowNotFoundError(self.workflow_id)
        return status


async def await_result(source: HandleSource, workflow_id: str) -> Any:
    """Wait for a workflow to finish: in-process through its task, else from its row.

    A workflow running elsewhere is re-read only when its ``w`` notification
    arrives (or the listener's safety net fires): one round trip per wake-up.

    Raises:
        DatabaseUnavailableError: its row could not be read.
    """
    return (await _await_end(source, workflow_id, patient=False))()


async def await_end(source: HandleSource, workflow_id: str) -> None:
    """Return once a workflow has ended: reached a terminal status, or been deleted.

    A read that fails because the database is unreachable is no ending: it
    is made again once the listener reconnects (or after a backoff).

    Raises:
        DBOSError: the workflow runs here and this runtime is shutting down.
    """
    with contextlib.suppress(WorkflowNotFoundError):  # deleted: it will not end otherwise
        await _await_end(source, workflow_id, patient=True)


async def _await_end(source: HandleSource, workflow_id: str, *, patient: bool) -> Callable[[], Any]:
    """Wait for a workflow to end; return what returns its result (or raises its error).

    ``patient``: see ``await_end``; else a failed read raises.
    """
    running = source.local.get(workflow_id)
    if running is not None:
        outcome = await asyncio.shield(running.future)
        if outcome.local:
            if not outcome.ended:  # this runtime stops: the workflow stays PENDING
                raise outcome.error
            return functools.partial(_local_outcome, outcome.value, outcome.error)
    # Running elsewhere: its completion is announced on ``w:<id>``.
    with source.listener.watch("w", workflow_id) as changed:
        pause = _REREAD_PAUSES[0]
        while True:
            try:
                async with source.connection() as conn:
                    row = await wf_table.select_workflow_outcome(conn, workflow_id)
            except DatabaseUnavailableError as exc:
                if not patient:
                    raise
                logger.warning(
                    "cannot read the status of workflow %s (%r); reading it again in %ss",
                    workflow_id,
                    exc,
                    pause,
                    extra={"action": "wait_reread", "workflow_id": workflow_id},
                )
                await changed.wait(pause)  # the listener's reconnection fires it
                pause = min(pause * 2, _REREAD_PAUSES[1])
                continue
            pause = _REREAD_PAUSES[0]
            if row is None:
                raise WorkflowNotFoundError(workflow_id)
            status = WorkflowStatusString(row["status"])
            if status.is_terminal:
                return functools.partial(_decode_outcome, workflow_id, status, row)
            if workflow_id in source.local:  # it started here meanwhile (recovery, resume)
                return await _await_end(source, workflow_id, patient=patient)
            await changed.wait(clock=source.clock)
            # A dequeue here fires w:<id> locally: switch to the task without a read.
            if workflow_id in source.local:
                return await _await_end(source, workflow_id, patient=patient)


_REREAD_PAUSES = (0.05, 5.0)  # seconds: the first and longest pause after a failed read


def _local_outcome(value: Any, error: BaseException | None) -> Any:
    if error is not None:
        raise error
    return value


def _decode_outcome(workflow_id: str, status: WorkflowStatusString, row: dict[str, Any]) -> Any:
    if status is WorkflowStatusString.SUCCESS:
        entry = registry.lookup(row["name"])
        annotation = serialization.return_annotation(entry.fn) if entry else Any
        return serialization.decode(row["output"], annotation)
    if status is WorkflowStatusString.CANCELLED:
        raise WorkflowCancelledError(
            workflow_id, row["deadline_epoch_ms"] if row.get("timed_out") else None
        )
    if status is WorkflowStatusString.MAX_RECOVERY_ATTEMPTS_EXCEEDED:
        entry = registry.lookup(row["name"])
        limit = entry.options.get("max_recovery_attempts", 0) if entry else 0
        raise MaxRecoveryAttemptsExceededError(workflow_id, limit)
    raise serialization.decode_exception(row["error"])


async def get_workflow_status(source: HandleSource, workflow_id: str) -> WorkflowStatus | None:
    """The recorded status of a workflow, or None. One round trip."""
    check_workflow_id(workflow_id)
    async with source.connection() as conn:
        row = await wf_table.select_workflow_status(conn, workflow_id)
    return None if row is None else status_from_row(row)


def status_from_row(row: dict[str, Any], *, load_input: bool = True) -> WorkflowStatus:
    """A WorkflowStatus from a ``workflow_status`` row."""
    entry = registry.lookup(row["name"])
    annotation = serialization.return_annotation(entry.fn) if entry else Any
    error = row.get("error")
    inputs = row.get("inputs")
    return WorkflowStatus(
        workflow_id=row["workflow_id"],
        status=WorkflowStatusString(row["status"]),
        name=row["name"],
        input=_inputs(inputs) if load_input and inputs is not None else None,
        output=serialization.decode(row.get("output"), annotation, strict=False),
        error=serialization.decode_exception(error) if error is not None else None,
        created_at=row.get("created_at"),
        updated_at=row.get("updated_at"),
        queue_name=row.get("queue_name"),
        executor_id=row.get("executor_id"),
        app_version=row.get("app_version"),
        recovery_attempts=row.get("recovery_attempts") or 0,
        parent_workflow_id=row.get("parent_workflow_id"),
        forked_from=row.get("forked_from"),
        deduplication_id=row.get("deduplication_id"),
        priority=row.get("priority") or 0,
        timeout_ms=row.get("timeout_ms"),
        deadline_epoch_ms=row.get("deadline_epoch_ms"),
    )


def _inputs(raw: str) -> Any:
    """Recorded inputs as JSON; the raw text when they do not decode (shown, not fatal)."""
    try:
        return serialization.decode(raw)
    except ValueError:  # orjson.JSONDecodeError
        return raw


async def retrieve_workflow(source: HandleSource, workflow_id: str) -> WorkflowHandle[Any]:
    """A handle to a recorded workflow.

    Raises:
        WorkflowNotFoundError: no workflow has this ID.
    """
    check_workflow_id(workflow_id)
    if workflow_id not in source.local:
        async with source.connection() as conn:
            if await wf_table.select_workflow_outcome(conn, workflow_id) is None:
                raise WorkflowNotFoundError(workflow_id)
    return WorkflowHandle(source, workflow_id)


WAIT_FIRST_STEP = "DBOS.wait_first"

Waitable = Union["WorkflowHandle[Any]", Awaitable[Any]]
"""What ``wait_first`` races: workflow handles, tasks, or coroutines (of durable calls)."""


def wait_first(items: Sequence[Waitable]) -> Coroutine[Any, Any, Any]:
    """The first of ``items`` to finish (succeed, fail or be cancelled).

    ``items`` are workflow handles, tasks, or coroutines; coroutines become
    tasks now, in order, so inside a workflow each is a branch with a fixed
    position. Returns the winning handle, or the winning task (for a task or
    a coroutine). The tasks made from coroutines that lost are cancelled;
    handles and tasks given as such are left running. A handle finishes when
    its workflow reaches a final status (or is deleted): a read of its status
    that fails because the database is unreachable is made again.

    Inside a workflow the choice is a checkpoint, taken now like every
    checkpoint's identity: replay returns the same winner (once it has
    finished again), whatever the timing.

    Raises:
        ValueError: ``items`` is empty.
        TypeError: an item is neither a handle nor awaitable.
        DBOSError: (when awaited) a handle's workflow runs on a runtime that is
            shutting down: it stays PENDING, unfinished.
    """
    items = list(items)
    if not items:
        raise ValueError("wait_first needs at least one handle, task or coroutine")
    for item in items:
        if not isinstance(item, WorkflowHandle) and not inspect.isawaitable(item):
            raise TypeError(f"wait_first takes handles, tasks or coroutines, got {item!r}")
    call = checkpoint.take(WAIT_FIRST_STEP)
    owned = [not isinstance(i, WorkflowHandle | asyncio.Future) for i in items]
    racing: list[WorkflowHandle[Any] | asyncio.Future[Any]] = [
        i if isinstance(i, WorkflowHandle) else asyncio.ensure_future(i) for i in items
    ]
    return _wait_first(call, racing, owned)


async def _wait_first(
    call: checkpoint.Call | None,
    racing: list[WorkflowHandle[Any] | asyncio.Future[Any]],
    owned: list[bool],
) -> Any:
    with call if call is not None else outside():
        found = None
        if call is not None and call.recorded is not None:
            found = await checkpoint.replay(call)
        if found is None:
            winner = await _first_finished(racing)
            if call is not None:
                # All handles: recorded by workflow ID, as releases before 0.2 did.
                chosen = racing[winner]
                key = chosen.workflow_id if isinstance(chosen, WorkflowHandle) else winner
                found = await checkpoint.record(call, output=serialization.encode(key))
        if found is not None:
            assert call is not None
            winner = _recorded_winner(call, racing, serialization.decode(found.output))
            chosen = racing[winner]
            if not isinstance(chosen, WorkflowHandle):
                await asyncio.wait([chosen])  # replay returns it once it has finished again
        losers = [r for i, r in enumerate(racing) if owned[i] and i != winner]
        futures = [loser for loser in losers if isinstance(loser, asyncio.Future)]
        for loser in futures:
            loser.cancel()
        if futures:
            await asyncio.wait(futures)
        return racing[winner]


def _recorded_winner(
    call: checkpoint.Call, racing: list[WorkflowHandle[Any] | asyncio.Future[Any]], key: object
) -> int:
    for i, item in enumerate(racing):
        if key == i if isinstance(key, int) else getattr(item, "workflow_id", None) == key:
            return i
    raise NonDeterministicWorkflowError(
        call.ctx.workflow_id,
        call.step_id,
        f"{WAIT_FIRST_STEP}({key!r})",
        WAIT_FIRST_STEP,
        branch=call.branch,
    )


async def _first_finished(racing: list[WorkflowHandle[Any] | asyncio.Future[Any]]) -> int:
    """The index of the first item to finish; the lowest among those finishing together."""
    done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    watchers: list[asyncio.Task[None]] = []

    def finished(_: object) -> None:
        if not done.done():
            done.set_result(None)

    async def watch(handle: WorkflowHandle[Any]) -> None:
        # Only an ending counts: its own error or cancellation do, an outage does not.
        await await_end(handle._source, handle.workflow_id)

    futures: list[asyncio.Future[Any]] = []
    for item in racing:
        if isinstance(item, WorkflowHandle):
            item = asyncio.ensure_future(watch(item))
            watchers.append(item)
        futures.append(item)
        item.add_done_callback(finished)
    try:
        await done
    finally:
        for future in futures:
            future.remove_done_callback(finished)
        for watcher in watchers:
            watcher.cancel()
    first = next(i for i, f in enumerate(futures) if f.done())
    if futures[first] in watchers and not futures[first].cancelled():
        futures[first].result()  # a watcher fails only when the runtime stops: no winner
    return first
