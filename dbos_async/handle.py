"""``WorkflowHandle`` and the reads behind it, for a runtime and a client alike.

A handle reads through a ``HandleSource``: the ``Runtime`` that started the
workflow (which awaits its own workflows in-process), or a ``DBOSClient``
(which runs nothing and waits for the ``w:<id>`` notification).
Results of workflows not registered in this process decode as plain JSON.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Coroutine, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

import anyio

from dbos_async import registry, serialization
from dbos_async.errors import (
    MaxRecoveryAttemptsExceededError,
    NonDeterministicWorkflowError,
    WorkflowCancelledError,
    WorkflowNotFoundError,
)
from dbos_async.models import WorkflowStatus, WorkflowStatusString
from dbos_async.systemdb import workflows as wf_table
from dbos_async.systemdb.steps import StepRecord
from dbos_async.validation import check_workflow_id

if TYPE_CHECKING:
    from dbos_async.context import Running, WorkflowContext
    from dbos_async.notifications import Listener
    from dbos_async.systemdb.pool import Pool, PooledConnection

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
            result: R = await await_result(self._source, self.workflow_id)
        return result

    async def get_status(self) -> WorkflowStatus:
        """The workflow's recorded status."""
        status = await get_workflow_status(self._source, self.workflow_id)
        if status is None:
            raise WorkflowNotFoundError(self.workflow_id)
        return status


async def await_result(source: HandleSource, workflow_id: str) -> Any:
    """Wait for a workflow to finish: in-process through its task, else from its row.

    A workflow running elsewhere is re-read only when its ``w`` notification
    arrives (or the listener's safety net fires): one round trip per wake-up.
    """
    running = source.local.get(workflow_id)
    if running is not None:
        outcome = await asyncio.shield(running.future)
        if outcome.local:
            if outcome.error is not None:
                raise outcome.error
            return outcome.value
    # Running elsewhere: its completion is announced on ``w:<id>``.
    with source.listener.watch("w", workflow_id) as changed:
        while True:
            async with source.connection() as conn:
                row = await wf_table.select_workflow_outcome(conn, workflow_id)
            if row is None:
                raise WorkflowNotFoundError(workflow_id)
            status = WorkflowStatusString(row["status"])
            if status.is_terminal:
                return _decode_outcome(workflow_id, status, row)
            if workflow_id in source.local:  # it started here meanwhile (recovery, resume)
                return await await_result(source, workflow_id)
            await changed.wait()
            # A dequeue here fires w:<id> locally: switch to the task without a read.
            if workflow_id in source.local:
                return await await_result(source, workflow_id)


def _decode_outcome(workflow_id: str, status: WorkflowStatusString, row: dict[str, Any]) -> Any:
    if status is WorkflowStatusString.SUCCESS:
        entry = registry.lookup(row["name"])
        annotation = serialization.return_annotation(entry.fn) if entry else Any
        return serialization.decode(row["output"], annotation)
    if status is WorkflowStatusString.CANCELLED:
        raise WorkflowCancelledError(workflow_id)
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
        input=serialization.decode(inputs) if load_input and inputs is not None else None,
        output=serialization.decode(row.get("output"), annotation),
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


def wait_first(handles: Sequence[WorkflowHandle[Any]]) -> Coroutine[Any, Any, WorkflowHandle[Any]]:
    """The first of ``handles`` whose workflow finishes (succeeds, fails or is cancelled).

    Inside a workflow the choice is a checkpoint: replay returns the same
    handle. The step ID is taken now, at call time, like every checkpoint's.

    Raises:
        ValueError: ``handles`` is empty.
    """
    from dbos_async.context import current_step_id, current_workflow

    handles = list(handles)
    if not handles:
        raise ValueError("wait_first needs at least one handle")
    ctx = current_workflow.get()
    if ctx is None or current_step_id.get() is not None:
        return _first_finished(handles)
    return _wait_first_recorded(ctx, ctx.take_step_id(), handles)


async def _first_finished(handles: list[WorkflowHandle[Any]]) -> WorkflowHandle[Any]:
    winner: list[WorkflowHandle[Any]] = []
    async with anyio.create_task_group() as tg:

        async def watch(handle: WorkflowHandle[Any]) -> None:
            with contextlib.suppress(Exception):  # an error or a cancellation is an ending too
                await handle.get_result()
            if not winner:
                winner.append(handle)
                tg.cancel_scope.cancel()

        for handle in handles:
            tg.start_soon(watch, handle)
    return winner[0]


async def _wait_first_recorded(
    ctx: WorkflowContext, step_id: int, handles: list[WorkflowHandle[Any]]
) -> WorkflowHandle[Any]:
    recorded = ctx.recorded.get(step_id)
    if recorded is None:
        first = await _first_finished(handles)
        started = time.time_ns() // 1_000_000
        mine = StepRecord(
            ctx.workflow_id,
            step_id,
            WAIT_FIRST_STEP,
            output=serialization.encode(first.workflow_id),
            started_at=started,
            completed_at=started,
            fence=ctx.fence,
        )
        recorded = await ctx.runtime.step_writer.submit(mine)
    if recorded.function_name != WAIT_FIRST_STEP:
        raise NonDeterministicWorkflowError(
            ctx.workflow_id, step_id, recorded.function_name, WAIT_FIRST_STEP
        )
    chosen = serialization.decode(recorded.output)
    for handle in handles:
        if handle.workflow_id == chosen:
            return handle
    raise NonDeterministicWorkflowError(
        ctx.workflow_id, step_id, f"{WAIT_FIRST_STEP}({chosen})", WAIT_FIRST_STEP
    )
