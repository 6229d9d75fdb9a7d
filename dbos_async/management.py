"""Workflow management: list, inspect, cancel, resume, restart, fork and delete.

One implementation serves the runtime (``DBOS.*``) and ``DBOSClient``: each
function takes the pool it works on. Where a workflow must run (resume,
restart, fork), the runtime passes itself and the workflow is claimed by it
and runs there; without one (a client, the CLI), the workflow is ENQUEUED on
``INTERNAL_QUEUE`` for any runtime's queue worker to pick up.

These calls are not checkpoints: call them from outside workflows (or from a step).
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypedDict, Unpack

import asyncpg

from dbos_async import context, observers, registry, serialization
from dbos_async.clock import REAL, Clock
from dbos_async.errors import (
    QueueDeduplicatedError,
    WorkflowConflictError,
    WorkflowNotFoundError,
)
from dbos_async.handle import status_from_row
from dbos_async.logs import get_logger
from dbos_async.models import StepInfo, WorkflowStatus, WorkflowStatusString
from dbos_async.recovery import run_claimed
from dbos_async.systemdb import management as mgmt_table
from dbos_async.systemdb import workflows as wf_table
from dbos_async.systemdb.pool import Pool, acquire, is_deduplication_violation
from dbos_async.validation import check_identifier, check_workflow_id

if TYPE_CHECKING:
    from dbos_async.runtime import Runtime

logger = get_logger(__name__)

INTERNAL_QUEUE = "_dbos_internal"
"""The queue every runtime dequeues from without limits: resumed, restarted and
forked workflows started by a client land here."""

QUEUED_STATUSES = (WorkflowStatusString.ENQUEUED, WorkflowStatusString.PENDING)
"""What ``list_queued_workflows`` lists unless told otherwise."""

_MAX_STEP_ID = 2**31 - 1  # step IDs are int4


class QueuedFilters(TypedDict, total=False):
    """Keyword arguments of ``list_queued_workflows``; see ``list_workflows``."""

    queue_name: str | Sequence[str] | None
    status: str | Sequence[str] | None
    name: str | Sequence[str] | None
    exclude_name: str | Sequence[str] | None
    start_time: int | datetime | None
    end_time: int | datetime | None
    executor_id: str | Sequence[str] | None
    limit: int | None
    offset: int | None
    sort_desc: bool
    load_input: bool
    load_output: bool


class ListFilters(QueuedFilters, total=False):
    """Keyword arguments of ``list_workflows``; each is documented there."""

    workflow_ids: Sequence[str] | None
    app_version: str | Sequence[str] | None


def workflow_filter(
    *,
    workflow_ids: Sequence[str] | None = None,
    status: str | Sequence[str] | None = None,
    name: str | Sequence[str] | None = None,
    exclude_name: str | Sequence[str] | None = None,
    queue_name: str | Sequence[str] | None = None,
    start_time: int | datetime | None = None,
    end_time: int | datetime | None = None,
    app_version: str | Sequence[str] | None = None,
    executor_id: str | Sequence[str] | None = None,
    limit: int | None = None,
    offset: int | None = None,
    sort_desc: bool = False,
    load_input: bool = True,
    load_output: bool = True,
    queued_only: bool = False,
) -> mgmt_table.WorkflowFilter:
    """Check the filters of ``list_workflows`` and normalize them for the query.

    Raises:
        ValueError: an unknown status, a negative limit or offset, a bad time or string.
    """
    statuses = _strings(status, "status")
    for s in statuses or ():
        if s not in WorkflowStatusString.__members__:
            known = ", ".join(WorkflowStatusString)
            raise ValueError(f"unknown workflow status {s!r}; expected one of {known}")
    return mgmt_table.WorkflowFilter(
        workflow_ids=_strings(workflow_ids, "workflow ID"),
        statuses=statuses,
        names=_strings(name, "name"),
        queue_names=_strings(queue_name, "queue name"),
        start_time=_epoch_ms(start_time, "start_time"),
        end_time=_epoch_ms(end_time, "end_time"),
        app_versions=_strings(app_version, "app_version"),
        executor_ids=_strings(executor_id, "executor_id"),
        excluded_names=_strings(exclude_name, "name"),
        queued_only=queued_only,
        load_input=bool(load_input),
        load_output=bool(load_output),
        limit=_count(limit, "limit"),
        offset=_count(offset, "offset"),
        sort_desc=bool(sort_desc),
    )


def _strings(value: str | Sequence[str] | None, what: str) -> list[str] | None:
    if value is None:
        return None
    values = [value] if isinstance(value, str) else list(value)
    return [check_identifier(v, what) for v in values]


def _epoch_ms(value: int | datetime | None, what: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        if value.tzinfo is None or value.utcoffset() is None:
            # Python would read it as local time, the CLI as UTC: refuse to guess.
            raise ValueError(
                f"{what} is a naive datetime: give it a time zone "
                "(datetime.now(UTC), or .replace(tzinfo=...))"
            )
        return int(value.timestamp() * 1000)
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise ValueError(f"{what} must be epoch milliseconds (int) or a datetime, got {value!r}")


def _count(value: int | None, what: str) -> int | None:
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"{what} must be a non-negative int, got {value!r}")
    return value


async def list_workflows(pool: Pool, **filters: Unpack[ListFilters]) -> list[WorkflowStatus]:
    """The recorded workflows matching every filter given, oldest first.

    Args:
        pool: The system database pool.
        **filters: ``workflow_ids``; ``status``, ``name``, ``queue_name``,
            ``app_version``, ``executor_id`` (each one value or a list: any
            of them matches); ``exclude_name`` (one or a list: none of them,
            e.g. a cron workflow whose ticks flood the listing);
            ``start_time``/``end_time`` (on ``created_at``, inclusive, epoch
            ms or datetime); ``limit``, ``offset``;
            ``sort_desc`` (newest first); ``load_input``/``load_output``
            (False: the payloads are not even read, and come back as None).

    Raises:
        ValueError: a filter is malformed (see ``workflow_filter``).
    """
    return await _list(pool, workflow_filter(**filters))


async def list_queued_workflows(
    pool: Pool, **filters: Unpack[QueuedFilters]
) -> list[WorkflowStatus]:
    """Workflows on a queue: ENQUEUED or PENDING unless ``status`` says otherwise.

    Takes the filters of ``list_workflows`` except ``workflow_ids`` and ``app_version``.
    """
    options: ListFilters = {**filters, "workflow_ids": None, "app_version": None}
    if options.get("status") is None:
        options["status"] = QUEUED_STATUSES
    return await _list(pool, workflow_filter(**options, queued_only=True))


async def _list(pool: Pool, f: mgmt_table.WorkflowFilter) -> list[WorkflowStatus]:
    async with acquire(pool) as conn:
        rows = await mgmt_table.list_workflows(conn, f)
    return [status_from_row(r, load_input=f.load_input) for r in rows]


async def list_workflow_steps(pool: Pool, workflow_id: str) -> list[StepInfo]:
    """The recorded steps of a workflow, in step order.

    A step is named by what it is: the deadline of ``DBOS.recv`` is
    ``"DBOS.recv deadline"``, though replay knows it as a ``DBOS.sleep``.
    Outputs decode to the step's annotated return type when the step is
    registered in this process, else to plain JSON.

    Raises:
        WorkflowNotFoundError: no workflow has this ID.
    """
    check_workflow_id(workflow_id)
    async with acquire(pool) as conn:
        rows = await mgmt_table.list_workflow_steps(conn, workflow_id)
    if rows is None:
        raise WorkflowNotFoundError(workflow_id)
    return [_step_from_row(r) for r in rows]


def _step_from_row(row: dict[str, Any]) -> StepInfo:
    entry = registry.lookup(row["function_name"])
    annotation = serialization.return_annotation(entry.fn) if entry else Any
    error = row["error"]
    return StepInfo(
        step_id=row["step_id"],
        branch=row["branch"],
        # A label says what a call recorded under a shared name was for.
        name=row["label"] or row["function_name"],
        output=serialization.decode(row["output"], annotation, strict=False),
        error=serialization.decode_exception(error) if error is not None else None,
        child_workflow_id=row["child_workflow_id"],
        started_at=row["started_at"],
        completed_at=row["completed_at"],
        attempts=row["attempts"],
    )


def _clock(runtime: Runtime | None) -> Clock:
    # A client (no runtime) acts in real time.
    return runtime.clock if runtime is not None else REAL


async def cancel_workflow(pool: Pool, workflow_id: str, runtime: Runtime | None = None) -> bool:
    """Mark a PENDING or ENQUEUED workflow CANCELLED; a finished one is left as it is.

    Returns whether this call cancelled it.

    The runtime running it interrupts it at once: its running step gets
    CancelledError and no later step starts. ``runtime`` (the caller's) does
    so before this returns, if the workflow runs there; another runtime learns
    it through NOTIFY, and a runtime that missed the notification at its
    next checkpoint, which the row refuses.

    Raises:
        WorkflowNotFoundError: no workflow has this ID.
    """
    check_workflow_id(workflow_id)
    async with acquire(pool) as conn:
        before, changed = await wf_table.cancel_workflow(
            conn, workflow_id, _clock(runtime).now_ms()
        )
    if before is None:
        raise WorkflowNotFoundError(workflow_id)
    if changed and runtime is not None:
        runtime.cancel_local(workflow_id)
        if runtime.observers:
            observers.notify(runtime.observers, "workflow_cancelled", workflow_id)
    logger.info(
        "cancel requested (was %s)",
        before,
        extra={"action": "cancel_workflow", "workflow_id": workflow_id},
    )
    return bool(changed)


async def resume_workflow(
    pool: Pool, workflow_id: str, runtime: Runtime | None = None
) -> WorkflowStatusString | None:
    """Continue a CANCELLED, ERROR or MAX_RECOVERY_ATTEMPTS_EXCEEDED workflow.

    Also a stranded PENDING one: the runtime instance that claimed it is gone
    (it does not hold its lock), and none of its app version took it over.

    It replays from the start, returning its recorded steps, so it goes on
    from its last completed step, with no deadline. A workflow of a queue is
    enqueued there again, so the queue's limits hold; any other runs on
    ``runtime`` if given, else (a client) it is enqueued on the internal queue
    for any runtime to pick up. An ENQUEUED workflow starts now, bypassing its
    queue (it leaves the queue, taking none of its slots), as DBOS does. Any
    other status is left as it is.

    Returns the status it had if it was resumed, None if it was left as it is.

    Raises:
        WorkflowNotFoundError: no workflow has this ID.
        QueueDeduplicatedError: its deduplication ID is live again on its queue.
    """
    check_workflow_id(workflow_id)
    with _reconciled_on_error(runtime):
        return await _resume(pool, workflow_id, runtime)


async def _resume(
    pool: Pool, workflow_id: str, runtime: Runtime | None
) -> WorkflowStatusString | None:
    async with acquire(pool) as conn:
        try:
            row = await wf_table.resume_workflow(
                conn,
                workflow_id,
                runtime.executor_id if runtime is not None else None,
                runtime.app_version if runtime is not None else None,
                INTERNAL_QUEUE,
                _clock(runtime).now_ms(),
                runtime.instance_id if runtime is not None else None,
                [e.name for e in registry.workflows()] if runtime is not None else (),
                sql_now_ms=_clock(runtime).sql_now_ms(),
            )
        except asyncpg.UniqueViolationError as exc:
            if not is_deduplication_violation(exc):
                raise
            status = await wf_table.select_workflow_status(conn, workflow_id)
            assert status is not None
            raise QueueDeduplicatedError(status["queue_name"], status["deduplication_id"]) from exc
        if row is None:
            raise WorkflowNotFoundError(workflow_id)
        if runtime is not None and row["new_status"] == WorkflowStatusString.PENDING:
            await run_claimed(runtime, conn, [row], observers.RESUME)
        return None if row["new_status"] is None else WorkflowStatusString(row["status"])


async def restart_workflow(pool: Pool, workflow_id: str, runtime: Runtime | None = None) -> str:
    """Run a workflow again from scratch, with the same inputs, under a new ID.

    This is ``fork_workflow(workflow_id, 0)``: the new workflow's
    ``forked_from`` names the original, which is left untouched.
    Returns the new ID (``SetWorkflowID`` chooses it).

    Raises:
        WorkflowNotFoundError: no workflow has this ID.
    """
    return await fork_workflow(pool, workflow_id, 0, runtime=runtime)


async def fork_workflow(
    pool: Pool,
    workflow_id: str,
    start_step: int,
    application_version: str | None = None,
    runtime: Runtime | None = None,
) -> str:
    """Start a copy of a workflow that reuses the outcomes of its first steps.

    The copy gets a new ID (from ``SetWorkflowID``, else a UUID), the same
    inputs, ``forked_from`` set to the original, and the recorded outcomes of
    the original's steps before position ``start_step`` of its own sequence:
    that sequence's steps with ``step_id < start_step``, and every step of
    each branch (task) the workflow created before reaching that position.
    Those are not run again; everything later is. The events and stream
    entries those steps wrote are copied with them (events set by releases
    before 0.2 are not: their checkpoints do not name the event). The
    original is not changed. With ``runtime``
    the copy runs there, unless ``application_version`` names another version:
    then, as without a runtime, it is ENQUEUED on ``INTERNAL_QUEUE`` for a
    runtime of that version (default: the original's version).

    Returns the new workflow's ID. If ``SetWorkflowID`` names an existing
    workflow of the same function, nothing is written and its ID is returned.

    Raises:
        ValueError: ``start_step`` is negative or not an int.
        WorkflowNotFoundError: no workflow has this ID.
        WorkflowConflictError: the chosen new ID is taken by another workflow function.
    """
    check_workflow_id(workflow_id)
    if not isinstance(start_step, int) or isinstance(start_step, bool):
        raise ValueError(f"start_step must be an int, got {start_step!r}")
    if not 0 <= start_step <= _MAX_STEP_ID:
        raise ValueError(f"start_step must be between 0 and {_MAX_STEP_ID}, got {start_step}")
    if application_version is not None:
        check_identifier(application_version, "application_version")
    here = runtime is not None and application_version in (None, runtime.app_version)
    new_id = context.take_next_workflow_id() or str(uuid.uuid4())
    fork = mgmt_table.Fork(
        original_id=workflow_id,
        new_id=new_id,
        start_step=start_step,
        executor_id=runtime.executor_id if here and runtime is not None else None,
        app_version=runtime.app_version if here and runtime is not None else application_version,
        queue_name=INTERNAL_QUEUE,
        now_ms=_clock(runtime).now_ms(),
        instance=runtime.instance_id if here and runtime is not None else None,
    )
    with _reconciled_on_error(runtime if here else None):
        row = await _fork(pool, fork, runtime if here else None)
    if row["new_id"] is None:
        if row["taken_name"] != row["name"]:
            raise WorkflowConflictError(new_id, row["taken_name"], row["name"])
        return new_id
    logger.info(
        "forked %s at step %d as %s (%d steps copied)",
        workflow_id,
        start_step,
        new_id,
        row["copied_steps"],
        extra={"action": "fork_workflow", "workflow_id": new_id},
    )
    return new_id


async def _fork(pool: Pool, fork: mgmt_table.Fork, runtime: Runtime | None) -> dict[str, Any]:
    """Record ``fork`` and, with ``runtime``, run the copy there; returns the recorded row."""
    async with acquire(pool) as conn:
        row = await mgmt_table.fork_workflow(conn, fork)
        if row is None:
            raise WorkflowNotFoundError(fork.original_id)
        if row["new_id"] is not None and runtime is not None:
            claimed = {
                "workflow_id": fork.new_id,
                "name": row["name"],
                "inputs": row["inputs"],
                "branched_steps": row["branched_steps"],
            }
            await run_claimed(runtime, conn, [claimed], observers.RESUME)
    return row


@contextlib.contextmanager
def _reconciled_on_error(runtime: Runtime | None) -> Iterator[None]:
    """A claim for ``runtime`` that failed may have committed: have the runtime reconcile."""
    try:
        yield
    except Exception:
        if runtime is not None:
            runtime.reconciler.request()
        raise


async def delete_workflow(pool: Pool, workflow_id: str, delete_children: bool = False) -> None:
    """Delete a workflow and everything it recorded: steps, messages, events, streams.

    With ``delete_children``, its child workflows go too, recursively. A
    deleted workflow that was still PENDING or ENQUEUED is interrupted where
    it runs, as by ``cancel_workflow``.

    Raises:
        WorkflowNotFoundError: no workflow has this ID.
    """
    check_workflow_id(workflow_id)
    async with acquire(pool) as conn:
        deleted = await mgmt_table.delete_workflow(conn, workflow_id, bool(delete_children))
    if not deleted:
        raise WorkflowNotFoundError(workflow_id)
    logger.info(
        "deleted %d workflows",
        len(deleted),
        extra={"action": "delete_workflow", "workflow_id": workflow_id},
    )
