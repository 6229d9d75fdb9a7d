"""``Queue`` and enqueue: durable work that workers of any process dequeue within limits.

An enqueue is one INSERT of an ENQUEUED row, which also announces the queue
on ``q:<name>``; idle workers wake on that notification (``queue_worker.py``
holds the dequeue loop and the claim that keeps the limits exact). Inside a
workflow an enqueue is a checkpoint, like starting a child workflow: replay
returns the recorded handle and never enqueues twice.

``enqueue_by_name`` is the one implementation, usable without a runtime (the
client enqueues through it by workflow name).
"""

from __future__ import annotations

import dataclasses
import math
import uuid
from collections.abc import Callable, Coroutine, Mapping
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

from dbos_async import checkpoint, context, observers, registry, serialization
from dbos_async.clock import REAL, Clock
from dbos_async.context import EnqueueOptions, WorkflowContext
from dbos_async.errors import DBOSError, QueueDeduplicatedError, WorkflowConflictError
from dbos_async.handle import WorkflowHandle
from dbos_async.idempotency import check_same_inputs
from dbos_async.management import INTERNAL_QUEUE
from dbos_async.systemdb import queues as queues_table
from dbos_async.systemdb.pool import Pool, acquire
from dbos_async.validation import INT4_MAX, check_identifier, check_seconds, check_workflow_id
from dbos_async.workflow import workflow

if TYPE_CHECKING:
    from dbos_async.runtime import Runtime

P = ParamSpec("P")
R = TypeVar("R")

RUN_STEP = "dbos_async.enqueued_step"
"""The registered workflow that runs one enqueued step."""

_registry: dict[str, Queue] = {}
_on_register: list[Callable[[Queue], None]] = []


class Queue:
    """A named queue whose workflows run within limits across every process.

    Args:
        name: Unique in the process; every process that dequeues it declares it.
        concurrency: Most of its workflows PENDING at once, across all processes.
        worker_concurrency: Most PENDING at once on one executor.
        limiter: ``{"limit": n, "period": seconds}``: at most n starts per period,
            across all processes.
        priority_enabled: Dequeue lower ``priority`` first (FIFO within one).
        partition_queue: Apply the limits per ``queue_partition_key``.

    Raises:
        ValueError: the name is taken or reserved, or an option is out of range.
    """

    def __init__(
        self,
        name: str,
        concurrency: int | None = None,
        worker_concurrency: int | None = None,
        limiter: Mapping[str, float] | None = None,
        priority_enabled: bool = False,
        partition_queue: bool = False,
    ) -> None:
        if name == INTERNAL_QUEUE:
            raise ValueError(f"the queue name {name!r} is reserved")
        self._configure(
            name, concurrency, worker_concurrency, limiter, priority_enabled, partition_queue
        )
        if name in _registry:
            raise ValueError(f"a queue named {name!r} is already declared in this process")
        _registry[name] = self
        for callback in list(_on_register):
            callback(self)

    def _configure(
        self,
        name: str,
        concurrency: int | None,
        worker_concurrency: int | None,
        limiter: Mapping[str, float] | None,
        priority_enabled: bool,
        partition_queue: bool,
    ) -> None:
        self.name = check_identifier(name, "queue name")
        self.concurrency = _positive_int(concurrency, "concurrency")
        self.worker_concurrency = _positive_int(worker_concurrency, "worker_concurrency")
        if (
            self.concurrency is not None
            and self.worker_concurrency is not None
            and self.worker_concurrency > self.concurrency
        ):
            raise ValueError(
                f"worker_concurrency ({self.worker_concurrency}) exceeds "
                f"concurrency ({self.concurrency})"
            )
        self.limiter: dict[str, float] | None = None
        if limiter is not None:
            if set(limiter) != {"limit", "period"}:
                raise ValueError('limiter must be {"limit": n, "period": seconds}')
            limit = _positive_int(limiter["limit"], "limiter limit")
            if limit is None:
                raise ValueError("limiter limit must be an int >= 1, got None")
            period = check_seconds(limiter["period"], "limiter period")
            self.limiter = {"limit": limit, "period": period}
        self.priority_enabled = bool(priority_enabled)
        self.partition_queue = bool(partition_queue)

    def __repr__(self) -> str:
        return f"Queue({self.name!r})"

    def enqueue(
        self, fn: Callable[P, Coroutine[Any, Any, R]], *args: P.args, **kwargs: P.kwargs
    ) -> Coroutine[Any, Any, WorkflowHandle[R]]:
        """Enqueue a workflow, or a single step, and return its handle once it is durable.

        Inside a workflow this is a checkpoint. Options come from the enclosing
        ``SetEnqueueOptions``, ``SetWorkflowID`` and ``SetWorkflowTimeout`` (the
        timeout starts when the workflow is dequeued).

        Raises:
            QueueDeduplicatedError: the deduplication ID is live on this queue.
            WorkflowConflictError: the workflow ID belongs to another function.
            SerializationError: the arguments cannot be encoded (nothing was written).
            ValueError: the options do not fit this queue.
        """
        from dbos_async.runtime import active_runtime
        from dbos_async.workflow import entry_of

        entry = entry_of(fn)
        options = context.enqueue_options()
        self._check(options)
        strict = context.strict_inputs()
        workflow_id = context.take_next_workflow_id()
        strict = strict and workflow_id is not None
        timeout_s = context.workflow_timeout()
        # Taken now, before any await: see checkpoint.take.
        call = checkpoint.take(entry.name)
        if call is not None:
            return self._enqueue_child(call, entry, args, kwargs, options, workflow_id, timeout_s)
        return self._enqueue(
            active_runtime(), entry, args, kwargs, options, workflow_id, timeout_s, strict=strict
        )

    def _check(self, options: EnqueueOptions) -> None:
        if self.partition_queue and options.queue_partition_key is None:
            raise ValueError(f"queue {self.name!r} is partitioned: set queue_partition_key")
        if not self.partition_queue and options.queue_partition_key is not None:
            raise ValueError(f"queue {self.name!r} is not partitioned: no queue_partition_key")
        if options.priority is not None and not self.priority_enabled:
            raise ValueError(f"queue {self.name!r} was declared without priority_enabled")

    async def _enqueue(
        self,
        runtime: Runtime,
        entry: registry.Registered,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        options: EnqueueOptions,
        workflow_id: str | None,
        timeout_s: float | None,
        parent: WorkflowContext | None = None,
        *,
        strict: bool = False,
    ) -> WorkflowHandle[Any]:
        name = entry.name
        if entry.kind != "workflow":  # a single step runs inside RUN_STEP
            args, kwargs = (entry.name, serialization.encode_inputs(args, kwargs, name)), {}
            name = RUN_STEP
        row = queued_row(
            queue_name=self.name,
            workflow_name=name,
            args=args,
            kwargs=kwargs,
            workflow_id=workflow_id,
            deduplication_id=options.deduplication_id,
            priority=options.priority,
            app_version=options.app_version or runtime.app_version,
            queue_partition_key=options.queue_partition_key,
            delay_seconds=options.delay_seconds,
            timeout_seconds=timeout_s,
            parent_workflow_id=parent.workflow_id if parent is not None else None,
            app_name=runtime.app_name,
            # A child's time runs out with its parent's, however long it waits in line.
            deadline_epoch_ms=parent.deadline_epoch_ms if parent is not None else None,
            clock=runtime.clock,
        )
        if runtime.observers:
            # The enqueue's trace context, stored: its dequeue joins the trace.
            trace = observers.collect_context(
                runtime.observers,
                lambda o: o.workflow_enqueued(row.workflow_id, entry.name, self.name),
            )
            row = dataclasses.replace(row, trace_context=trace)
        # Group-committed with concurrent enqueues: one statement for many.
        result = await runtime.enqueue_writer.submit(row)
        workflow_id = enqueued_id(row, result)
        if strict and result is not None:  # the ID was taken: by the same inputs?
            async with runtime.connection() as conn:
                await check_same_inputs(conn, workflow_id, row.name, row.inputs)
        return WorkflowHandle(runtime, workflow_id)

    async def _enqueue_child(
        self,
        call: checkpoint.Call,
        entry: registry.Registered,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        options: EnqueueOptions,
        workflow_id: str | None,
        timeout_s: float | None,
    ) -> WorkflowHandle[Any]:
        with call:
            runtime = call.ctx.runtime
            found = await checkpoint.replay(call) if call.recorded is not None else None
            if found is None:
                child_id = workflow_id or call.child_id()
                error = None
                try:
                    await self._enqueue(
                        runtime, entry, args, kwargs, options, child_id, timeout_s, call.ctx
                    )
                except QueueDeduplicatedError as exc:
                    # Recorded, so replay raises it again whatever the queue holds then.
                    error = serialization.encode_exception(exc)
                # Recorded after the row exists, so replay never names a missing workflow.
                found = await checkpoint.record(
                    call, error=error, child_workflow_id=None if error else child_id
                )
                if found is None:
                    if error is not None:
                        raise serialization.decode_exception(error)
                    return WorkflowHandle(runtime, child_id)
            if found.error is not None:
                raise serialization.decode_exception(found.error)
            assert found.child_workflow_id is not None
            return WorkflowHandle(runtime, found.child_workflow_id)


async def enqueue_by_name(
    pool: Pool,
    *,
    queue_name: str,
    workflow_name: str,
    args: tuple[Any, ...] = (),
    kwargs: Mapping[str, Any] | None = None,
    workflow_id: str | None = None,
    deduplication_id: str | None = None,
    priority: int | None = None,
    app_version: str | None = None,
    queue_partition_key: str | None = None,
    delay_seconds: float | None = None,
    timeout_seconds: float | None = None,
    parent_workflow_id: str | None = None,
    app_name: str | None = None,
    on_conflict: str = "return",
) -> str:
    """Enqueue a workflow by its registered name; returns its workflow ID once durable.

    Needs no runtime and none of the application's code (``DBOSClient`` uses
    it). The queue's own options are not checked here: they are known only to
    the processes that declare the queue. An ID that exists already is
    returned as it is and nothing is enqueued. One round trip (two in the rare
    case where an enqueue under the same ID commits during this one).
    ``Queue.enqueue`` builds the same row but group-commits it with the
    runtime's concurrent enqueues.

    Args:
        pool: A system-database pool (search path on the system schema).
        queue_name: The queue; any runtime that declares it (or, for the
            internal queue, every runtime) dequeues the workflow.
        workflow_name: The registered name of the workflow function.
        args: Positional arguments, encoded as JSON now.
        kwargs: Keyword arguments.
        workflow_id: Idempotency key; a new UUID when None.
        deduplication_id: See ``SetEnqueueOptions``.
        priority: Lower runs first on a queue with ``priority_enabled``; default 0.
        app_version: Only runtimes of this version dequeue it; None: the latest
            version (see versions.py), or any while none is registered.
        queue_partition_key: The partition, on a partitioned queue.
        delay_seconds: Not dequeued before this many seconds from now.
        timeout_seconds: The workflow's timeout, counted from its dequeue.
        parent_workflow_id: The workflow that enqueued it, if any.
        app_name: Recorded with the workflow.
        on_conflict: ``"raise"``: refuse a ``workflow_id`` that exists with
            other inputs (see ``SetWorkflowID``).

    Raises:
        QueueDeduplicatedError: the deduplication ID is live on this queue.
        WorkflowConflictError: ``workflow_id`` belongs to another function (or,
            with ``on_conflict="raise"``, was recorded with other inputs).
        SerializationError: the arguments cannot be encoded (nothing was written).
        ValueError: a name or an option is invalid.
    """
    row = queued_row(
        queue_name=queue_name,
        workflow_name=workflow_name,
        args=args,
        kwargs=kwargs,
        workflow_id=workflow_id,
        deduplication_id=deduplication_id,
        priority=priority,
        app_version=app_version,
        queue_partition_key=queue_partition_key,
        delay_seconds=delay_seconds,
        timeout_seconds=timeout_seconds,
        parent_workflow_id=parent_workflow_id,
        app_name=app_name,
    )
    async with acquire(pool) as conn:
        (result,) = await queues_table.enqueue_workflows(conn, [row])
        workflow_id = enqueued_id(row, result)
        if on_conflict == "raise" and result is not None:
            await check_same_inputs(conn, workflow_id, row.name, row.inputs)
    return workflow_id


def queued_row(
    *,
    queue_name: str,
    workflow_name: str,
    args: tuple[Any, ...],
    kwargs: Mapping[str, Any] | None,
    workflow_id: str | None,
    deduplication_id: str | None,
    priority: int | None,
    app_version: str | None,
    queue_partition_key: str | None,
    delay_seconds: float | None,
    timeout_seconds: float | None,
    parent_workflow_id: str | None,
    app_name: str | None,
    deadline_epoch_ms: int | None = None,
    clock: Clock = REAL,
) -> queues_table.NewQueued:
    """Check the options and encode the inputs of an enqueue: everything before a write."""
    check_identifier(queue_name, "queue name")
    check_identifier(workflow_name, "workflow name")
    EnqueueOptions(deduplication_id, priority, app_version, queue_partition_key, delay_seconds)
    if timeout_seconds is not None:
        check_seconds(timeout_seconds, "timeout_seconds")
    inputs = serialization.encode_inputs(tuple(args), dict(kwargs or {}), workflow_name)
    workflow_id = check_workflow_id(workflow_id) if workflow_id else str(uuid.uuid4())
    return queues_table.NewQueued(
        workflow_id=workflow_id,
        name=workflow_name,
        inputs=inputs,
        app_name=app_name,
        app_version=app_version,
        now_ms=clock.now_ms(),
        queue_name=queue_name,
        partition_key=queue_partition_key,
        deduplication_id=deduplication_id,
        priority=priority or 0,
        delay_ms=math.ceil(delay_seconds * 1000) if delay_seconds else None,
        timeout_ms=math.ceil(timeout_seconds * 1000) if timeout_seconds else None,
        parent_workflow_id=parent_workflow_id,
        deadline_epoch_ms=deadline_epoch_ms,
        sql_now_ms=clock.sql_now_ms(),
    )


def enqueued_id(row: queues_table.NewQueued, result: queues_table.Enqueued) -> str:
    """The workflow ID an enqueue resolved to, or its error raised."""
    if isinstance(result, QueueDeduplicatedError):
        raise result
    if result is not None and result != row.name:
        raise WorkflowConflictError(row.workflow_id, result, row.name)
    return row.workflow_id


def registered_queues() -> list[Queue]:
    """Every queue declared in this process."""
    return list(_registry.values())


def internal_queue() -> Queue:
    """The unlimited queue every runtime dequeues (not in the registry)."""
    queue = Queue.__new__(Queue)
    queue._configure(INTERNAL_QUEUE, None, None, None, False, False)
    return queue


def on_register(callback: Callable[[Queue], None]) -> Callable[[], None]:
    """Call ``callback`` for every queue declared from now on; returns the undo."""
    _on_register.append(callback)
    return lambda: _on_register.remove(callback)


def forget_queue(name: str) -> None:
    """Drop a queue from the registry (tests declare many; runtimes keep serving it)."""
    _registry.pop(name, None)


def _positive_int(value: object, what: str) -> int | None:
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= INT4_MAX:
        raise ValueError(f"{what} must be an int from 1 to {INT4_MAX}, got {value!r}")
    return value


@workflow(RUN_STEP)
async def _run_enqueued_step(step_name: str, inputs: str) -> Any:
    """Run one enqueued ``@DBOS.step`` or ``@DBOS.transaction`` as a checkpointed step."""
    entry = registry.lookup(step_name)
    if entry is None or "wrapper" not in entry.options:
        raise DBOSError(f"the step {step_name!r} is not registered in this process")
    args, kwargs = serialization.decode_inputs(inputs, entry.fn)
    return await entry.options["wrapper"](*args, **kwargs)
