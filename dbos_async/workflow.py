"""``@DBOS.workflow``: starting workflows (top-level and child) and running them.

A workflow runs as one task in the runtime's task group. Its row is written
(PENDING, with its inputs) before the task starts, so once ``start`` returns the
workflow will finish even if this process dies: recovery replays it.
"""

from __future__ import annotations

import asyncio
import functools
import math
import uuid
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

import anyio
from anyio.abc import TaskStatus

from dbos_async import branches, checkpoint, context, observers, registry, serialization
from dbos_async.branches import Branch, current_branch
from dbos_async.context import FencedOff, Running, WorkflowContext, current_workflow
from dbos_async.errors import (
    DatabaseUnavailableError,
    DBOSError,
    WorkflowCancelledError,
    WorkflowConflictError,
)
from dbos_async.handle import WorkflowHandle
from dbos_async.idempotency import check_same_inputs
from dbos_async.logs import get_logger
from dbos_async.systemdb import steps as steps_table
from dbos_async.systemdb import workflows as wf_table
from dbos_async.systemdb.steps import StepKey, StepRecord

if TYPE_CHECKING:
    from dbos_async.runtime import Runtime

logger = get_logger(__name__)

P = ParamSpec("P")
R = TypeVar("R")


@dataclass(slots=True)
class Outcome:
    """How a workflow ended, as handed from its task to in-process waiters."""

    value: Any = None
    error: BaseException | None = None
    local: bool = True  # False: the workflow is not running here; read the database
    ended: bool = True  # False: this runtime stopped it unfinished (``error`` says so)


def workflow(
    name: str | None = None, max_recovery_attempts: int = 100
) -> Callable[[Callable[P, Coroutine[Any, Any, R]]], Callable[P, Coroutine[Any, Any, R]]]:
    """Declare a durable workflow: an ``async def`` whose durable calls are checkpointed.

    Args:
        name: The registered name (default: ``module.qualname``); recovery
            finds the function by it.
        max_recovery_attempts: Recoveries allowed before the workflow is
            marked MAX_RECOVERY_ATTEMPTS_EXCEEDED.

    Calling the workflow runs it and returns its result; ``DBOS.start_workflow``
    starts it in the background. ``SetWorkflowID`` makes a call idempotent.

    Raises:
        ValueError: ``max_recovery_attempts`` < 0.
        TypeError: the decorated function is not an ``async def``.
    """
    if max_recovery_attempts < 0:
        raise ValueError("max_recovery_attempts must be >= 0")

    def decorator(fn: Callable[P, Coroutine[Any, Any, R]]) -> Callable[P, Coroutine[Any, Any, R]]:
        if not asyncio.iscoroutinefunction(fn):
            raise TypeError(f"@DBOS.workflow needs an async def function, got {fn!r}")
        entry = registry.register("workflow", fn, name, max_recovery_attempts=max_recovery_attempts)

        @functools.wraps(fn)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> Coroutine[Any, Any, R]:
            # Not async itself: a child's step ID is taken here, at call time.
            handle = start_soon(entry, args, kwargs)
            return _result_of(handle)

        wrapper.__dbos_entry__ = entry  # type: ignore[attr-defined]
        return wrapper

    return decorator


async def _result_of(handle: Coroutine[Any, Any, WorkflowHandle[Any]]) -> Any:
    return await (await handle).get_result()


def entry_of(fn: Callable[..., Any]) -> registry.Registered:
    """The registration behind a decorated function.

    Raises:
        TypeError: ``fn`` is not decorated with ``@DBOS.workflow``/``step``/``transaction``.
    """
    entry = getattr(fn, "__dbos_entry__", None)
    if not isinstance(entry, registry.Registered):
        raise TypeError(f"{fn!r} is not a registered dbos_async workflow")
    return entry


def start_soon(
    entry: registry.Registered,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    runtime: Runtime | None = None,
) -> Coroutine[Any, Any, WorkflowHandle[Any]]:
    """Start a workflow; inside a workflow it becomes a child, checkpointed as one step."""
    from dbos_async.runtime import active_runtime

    call = checkpoint.take(entry.name)
    if call is not None:
        # The ID set with SetWorkflowID is taken now too, like the call's identity.
        child_id = context.take_next_workflow_id()
        return _start_child(call, child_id, entry, args, kwargs)
    return _start(runtime or active_runtime(), entry, args, kwargs)


async def _start(
    runtime: Runtime,
    entry: registry.Registered,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    *,
    workflow_id: str | None = None,
    parent: WorkflowContext | None = None,
) -> WorkflowHandle[Any]:
    # Strict only for a key the caller chose with SetWorkflowID.
    strict = workflow_id is None and context.strict_inputs()
    workflow_id = workflow_id or context.take_next_workflow_id() or str(uuid.uuid4())
    inputs = serialization.encode_inputs(args, kwargs, entry.name)  # before any write
    running = runtime.local.get(workflow_id)
    if running is not None:
        if running.name != entry.name:
            raise WorkflowConflictError(workflow_id, running.name, entry.name)
        if strict:
            async with runtime.connection() as conn:
                await check_same_inputs(conn, workflow_id, entry.name, inputs)
        return WorkflowHandle(runtime, workflow_id)
    timeout = context.workflow_timeout()
    created = runtime.clock.now_ms()
    deadline = parent.deadline_epoch_ms if parent is not None else None
    if timeout is not None:
        own = created + int(timeout * 1000)
        deadline = own if deadline is None else min(deadline, own)
    # The caller's trace context (in the caller's task), stored with the row.
    trace = (
        observers.collect_context(runtime.observers, lambda o: o.start_context())
        if runtime.observers
        else None
    )
    # Claim the ID in-process first, so concurrent starts here share one execution.
    future: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
    runtime.local[workflow_id] = Running(entry.name, future)
    try:
        existing = await runtime.workflow_writer.submit(
            wf_table.NewWorkflow(
                workflow_id=workflow_id,
                name=entry.name,
                inputs=inputs,
                app_name=runtime.app_name,
                app_version=runtime.app_version,
                executor_id=runtime.executor_id,
                now_ms=created,
                parent_workflow_id=parent.workflow_id if parent is not None else None,
                timeout_ms=int(timeout * 1000) if timeout is not None else None,
                deadline_epoch_ms=deadline,
                claimed_by=runtime.instance_id,
                trace_context=trace,
            )
        )
    except BaseException:
        _release(runtime, workflow_id, future, Outcome(local=False))
        raise
    if existing is not None and existing.claimed_by == runtime.instance_id:
        # Our own insert, sent again after its reply was lost: it is ours to run
        # (if it is still PENDING; otherwise the row says how it ended).
        if existing.status == "PENDING" and existing.name == entry.name:
            ctx = spawn(
                runtime, entry, workflow_id, args, kwargs, {}, deadline, future, existing.fence
            )
            ctx.trace_context = trace
            return WorkflowHandle(runtime, workflow_id)
    if existing is not None:
        # Recorded before: run nothing, wait for the first execution's result.
        _release(runtime, workflow_id, future, Outcome(local=False))
        if existing.name != entry.name:
            raise WorkflowConflictError(workflow_id, existing.name, entry.name)
        if strict:
            async with runtime.connection() as conn:
                await check_same_inputs(conn, workflow_id, entry.name, inputs)
        return WorkflowHandle(runtime, workflow_id)
    spawn(runtime, entry, workflow_id, args, kwargs, {}, deadline, future).trace_context = trace
    return WorkflowHandle(runtime, workflow_id)


async def _start_child(
    call: checkpoint.Call,
    child_id: str | None,
    entry: registry.Registered,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> WorkflowHandle[Any]:
    with call:
        runtime = call.ctx.runtime
        found = await checkpoint.replay(call) if call.recorded is not None else None
        if found is None:
            child_id = child_id or call.child_id()
            handle = await _start_in_runtime(runtime, entry, args, kwargs, child_id, call.ctx)
            # Recorded after the child's row exists, so replay never names a missing child.
            found = await checkpoint.record(call, child_workflow_id=child_id)
            if found is None:
                return handle
        assert found.child_workflow_id is not None
        return WorkflowHandle(runtime, found.child_workflow_id)


async def _start_in_runtime(
    runtime: Runtime,
    entry: registry.Registered,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    workflow_id: str,
    parent: WorkflowContext,
) -> WorkflowHandle[Any]:
    """``_start`` a child in a task of the runtime, which no cancellation of the parent reaches.

    Cancelling a workflow cancels its branch tasks natively (gather and
    TaskGroup pass it on with ``task.cancel()``), which no anyio shield stops:
    a child whose row was being written would be left inserted, with no task.
    """
    started: asyncio.Future[WorkflowHandle[Any]] = asyncio.get_running_loop().create_future()

    async def start() -> None:
        try:
            handle = await _start(
                runtime, entry, args, kwargs, workflow_id=workflow_id, parent=parent
            )
        except BaseException as exc:  # the caller gets it, if it still waits
            if not started.done():
                started.set_exception(exc)
                started.exception()  # retrieved: a cancelled caller never asks
            if isinstance(exc, asyncio.CancelledError):
                raise
        else:
            if not started.done():
                started.set_result(handle)

    with branches.outside():
        runtime.workflow_group.start_soon(start)
    return await asyncio.shield(started)


def _deadline(deadline_epoch_ms: int | None) -> float:
    """An epoch-millisecond deadline in epoch seconds (inf: none)."""
    return math.inf if deadline_epoch_ms is None else deadline_epoch_ms / 1000


class RowChecks:
    """Re-reads the rows of workflows running here on a hint, and acts on what they say.

    The hints are a ``c:`` (cancel) or ``a:`` (adoption) notification, and a
    reconnect of the listener (then every workflow running here is checked,
    since notifications sent meanwhile were lost). A notification is only a
    hint: any role that may connect can send one, so nothing is stopped on its
    word. One task of the runtime does the reads, a batch at a time.
    """

    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime
        self._ids: set[str] = set()
        self._everything = False
        self._wake = asyncio.Event()

    def request(self, workflow_ids: Sequence[str] | None) -> None:
        """Check these workflows (None: every one running here) soon."""
        if workflow_ids is None:
            self._everything = True
        else:
            # Not running here: nothing to check (the common case for a:/c:).
            self._ids.update(w for w in workflow_ids if w in self._runtime.local)
            if not self._ids:
                return
        self._wake.set()

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Do the requested checks until cancelled."""
        task_status.started()
        while True:
            await self._wake.wait()
            self._wake.clear()
            ids = None if self._everything else list(self._ids)
            self._ids.clear()
            self._everything = False
            await _verify(self._runtime, ids)


async def _verify(runtime: Runtime, workflow_ids: Sequence[str] | None) -> None:
    running = {
        wid: r.ctx
        for wid, r in list(runtime.local.items())
        if r.ctx is not None and (workflow_ids is None or wid in workflow_ids)
    }
    if not running:
        return
    try:
        async with runtime.connection() as conn:
            states = await wf_table.select_workflow_states(conn, list(running))
    except Exception as exc:  # the next checkpoint refuses a stale one anyway
        logger.warning("could not re-read workflows running here: %r", exc)
        return
    for wid, ctx in running.items():
        status, fence = states.get(wid, ("DELETED", ctx.fence))
        if fence > ctx.fence:
            ctx.adopted = True  # another runtime took it: stop, record nothing
        elif status == "PENDING":
            continue
        else:
            ctx.cancelled = True  # cancelled or deleted
        if ctx.cancel_scope is not None:
            ctx.cancel_scope.cancel()


def cancel_local(runtime: Runtime, workflow_id: str) -> None:
    """Interrupt a workflow running here whose row was just marked CANCELLED."""
    running = runtime.local.get(workflow_id)
    if running is None or running.ctx is None:
        return
    running.ctx.cancelled = True
    if running.ctx.cancel_scope is not None:
        running.ctx.cancel_scope.cancel()


def _release(
    runtime: Runtime, workflow_id: str, future: asyncio.Future[Outcome], outcome: Outcome
) -> None:
    running = runtime.local.get(workflow_id)
    if running is not None and running.future is future:
        del runtime.local[workflow_id]
    if not future.done():
        future.set_result(outcome)


def spawn(
    runtime: Runtime,
    entry: registry.Registered,
    workflow_id: str,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    recorded: dict[StepKey, StepRecord],
    deadline_epoch_ms: int | None,
    future: asyncio.Future[Outcome] | None = None,
    fence: int = 0,
    branched: bool = True,
) -> WorkflowContext:
    """Run a recorded PENDING workflow as a task of the runtime; return its context.

    ``fence`` is the token this runtime holds on the row (from its claim);
    ``branched`` is False for a history recorded with flat step IDs. The
    task starts later: the context may be adjusted until the caller awaits.
    """
    if future is None:
        future = asyncio.get_running_loop().create_future()
        runtime.local[workflow_id] = Running(entry.name, future)
    ctx = WorkflowContext(runtime, workflow_id, entry.name, recorded, branched)
    ctx.deadline_epoch_ms = deadline_epoch_ms
    ctx.fence = fence
    runtime.local[workflow_id].ctx = ctx
    # Before the workflow's first task: a factory set since launch is wrapped too.
    branches.install(asyncio.get_running_loop())
    if current_branch.get() is None:
        runtime.workflow_group.start_soon(_execute, ctx, entry, args, kwargs, future)
    else:
        with branches.outside():  # its task takes no position in a branch that starts it
            runtime.workflow_group.start_soon(_execute, ctx, entry, args, kwargs, future)
    return ctx


async def _execute(
    ctx: WorkflowContext,
    entry: registry.Registered,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    future: asyncio.Future[Outcome],
) -> None:
    # The task inherited its starter's context: clear what must not leak in.
    current_workflow.set(ctx)
    root = Branch(ctx)
    current_branch.set(root)
    context.current_step_id.set(None)
    context.current_connection.set(None)
    context.take_next_workflow_id()
    runtime = ctx.runtime
    outcome = Outcome()
    row: wf_table.Outcome | None = None
    replaying = False
    loaded = len(ctx.recorded)  # now: replay takes each record out (checkpoint.take)
    if runtime.observers:
        _observe_start(ctx, args, kwargs)
    try:
        # cancel_workflow and the deadline cancel this scope; a shutdown cancels
        # the runtime's task group around it instead, and records nothing.
        with runtime.clock.scope(_deadline(ctx.deadline_epoch_ms)) as scope:
            ctx.cancel_scope = scope
            if ctx.cancelled:
                scope.cancel()
            try:
                try:
                    value = await entry.fn(*args, **kwargs)
                except BaseExceptionGroup as group:
                    # A branch's checkpoint found the workflow no longer ours,
                    # inside a task group of the workflow's: that, not the
                    # group, is how the workflow ends.
                    fenced = _fenced_in(group)
                    if fenced is not None:
                        raise fenced from group
                    raise
                finally:
                    _finish(ctx, root)
                if ctx.lost:  # it caught an outage and went on: not an outcome either
                    raise DatabaseUnavailableError(f"{ctx.workflow_id!r} lost the database")
                output = serialization.encode(value, f"the result of workflow {entry.name}")
                row = wf_table.Outcome(
                    ctx.workflow_id, "SUCCESS", output, None, runtime.clock.now_ms(), ctx.fence
                )
                outcome.value = value
            except Exception as exc:
                if ctx.lost or checkpoint.is_outage(exc):
                    raise  # not the workflow's outcome: it replays once the database is back
                row = wf_table.Outcome(
                    ctx.workflow_id,
                    "ERROR",
                    None,
                    serialization.encode_exception(exc),
                    runtime.clock.now_ms(),
                    ctx.fence,
                )
                outcome.error = exc
        if ctx.adopted:
            raise FencedOff(ctx.workflow_id)
        if scope.cancel_called:
            timed_out = not ctx.cancelled  # else cancel_workflow did it
            deadline = ctx.deadline_epoch_ms if timed_out else None
            outcome = Outcome(error=WorkflowCancelledError(ctx.workflow_id, deadline))
            if timed_out:  # the deadline passed: record it (cancel_workflow already did)
                ctx.cancelled = True
                with runtime.shields.scope():
                    async with runtime.connection() as conn:
                        # Fenced: if another runtime adopted it meanwhile, the row is its.
                        _, changed = await wf_table.cancel_workflow(
                            conn, ctx.workflow_id, runtime.clock.now_ms(), ctx.fence
                        )
                if not changed:
                    outcome = Outcome(local=False)
        else:
            assert row is not None
            if ctx.interrupts:  # replay must see what the outcome followed
                await checkpoint.settle(ctx)
            if not await runtime.completion_writer.submit(row):
                # Cancelled (or adopted) meanwhile: the row, not the function's
                # result, says how it ended; waiters here read it.
                outcome = Outcome(local=False)
            elif outcome.error is not None:
                logger.error(
                    "workflow %s (%s) ended in ERROR: %r",
                    ctx.workflow_id,
                    entry.name,
                    outcome.error,
                    extra={"action": "workflow_error", "workflow_id": ctx.workflow_id},
                )
    except FencedOff as fenced:
        # Adopted by another runtime, or cancelled: the row says what happened;
        # waiters here read it.
        outcome = Outcome(local=False)
        logger.warning(
            "workflow %s %s; stopped here",
            ctx.workflow_id,
            fenced.reason,
            extra={"action": "fenced", "workflow_id": ctx.workflow_id},
        )
    except Exception as exc:
        if runtime.stopping:
            # The shutdown cut off a write: as for any shutdown, nothing more
            # is recorded and the row stays PENDING to recover.
            outcome = Outcome(error=_interrupted(ctx.workflow_id), ended=False)
            return
        # The database stayed unreachable past the checkpoint retries: record
        # nothing, and replay from the recorded steps once it answers again.
        logger.warning(
            "workflow %s lost the database (%r); it replays when the database is back",
            ctx.workflow_id,
            exc,
            extra={"action": "replay_later", "workflow_id": ctx.workflow_id},
        )
        runtime.workflow_group.start_soon(_replay_later, ctx, entry, args, kwargs, future, loaded)
        replaying = True  # the future goes on to the replay: its waiters keep waiting
    except BaseException:
        # Shutdown: record nothing; the row stays PENDING and recovers.
        outcome = Outcome(error=_interrupted(ctx.workflow_id), ended=False)
        raise
    finally:
        if not replaying:
            _release(ctx.runtime, ctx.workflow_id, future, outcome)
        if ctx.event is not None:
            _observe_end(ctx, outcome, replaying)
        logger.debug("workflow task ended", extra={"workflow_id": ctx.workflow_id})


def _observe_start(ctx: WorkflowContext, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    runtime = ctx.runtime
    event = observers.WorkflowEvent(
        ctx.workflow_id,
        ctx.name,
        runtime.app_version,
        runtime.executor_id,
        ctx.origin,
        ctx.queue_name,
        ctx.recovery_attempt,
        observers.load_context(ctx.trace_context),
        args,
        kwargs,
    )
    ctx.event = event
    if ctx.origin == observers.DEQUEUE and ctx.queue_wait_seconds is not None:
        observers.notify(runtime.observers, "workflow_dequeued", event, ctx.queue_wait_seconds)
    elif ctx.origin in (observers.RECOVERY, observers.ADOPTION):
        observers.notify(runtime.observers, "workflow_recovered", event)
    observers.notify(runtime.observers, "workflow_started", event)


def _observe_end(ctx: WorkflowContext, outcome: Outcome, replaying: bool) -> None:
    if replaying or not outcome.local or not outcome.ended:
        status = observers.STOPPED  # no outcome here (see observers.STOPPED)
    elif isinstance(outcome.error, WorkflowCancelledError):
        status = observers.CANCELLED
    elif outcome.error is not None:
        status = observers.ERROR
    else:
        status = observers.SUCCESS
    error = outcome.error if status in (observers.ERROR, observers.CANCELLED) else None
    observers.notify(
        ctx.runtime.observers,
        "workflow_finished",
        ctx.event,
        status,
        error,
        outcome.value if status == observers.SUCCESS else None,
        ctx.replayed,
    )


def _fenced_in(group: BaseExceptionGroup[BaseException]) -> FencedOff | None:
    """The first FencedOff among a group's exceptions, nested groups included."""
    for exc in group.exceptions:
        if isinstance(exc, FencedOff):
            return exc
        if isinstance(exc, BaseExceptionGroup):
            found = _fenced_in(exc)
            if found is not None:
                return found
    return None


def _interrupted(workflow_id: str) -> DBOSError:
    return DBOSError(
        f"Workflow {workflow_id!r} was interrupted; it stays PENDING and resumes on recovery"
    )


def _finish(ctx: WorkflowContext, root: Branch) -> None:
    """The workflow's function has ended (returned, raised, or was cancelled).

    No durable call may follow: the tasks it created that still run are
    cancelled, as its own task is, since they are not all in its cancel scope
    (a task the workflow was not awaiting is in none). Their interrupted calls
    are not recorded, and a durable call they make anyway raises NotInWorkflowError.
    """
    stopped = checkpoint.stopping(ctx) if ctx.tasks else True
    ctx.finished = True
    root.busy += 1  # what runs from here on in this task is the runtime's
    left = [task for task in ctx.tasks if not task.done()] if ctx.tasks else None
    if not left:
        return
    for task in left:
        task.cancel()
    if not stopped:
        logger.warning(
            "workflow %s ended while %d task(s) it created were still running (%s); "
            "they were cancelled: await every task a workflow creates",
            ctx.workflow_id,
            len(left),
            ", ".join(getattr(task, "get_name", task.__repr__)() for task in left[:5]),
            extra={"action": "outlived", "workflow_id": ctx.workflow_id},
        )


async def _replay_later(
    ctx: WorkflowContext,
    entry: registry.Registered,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    future: asyncio.Future[Outcome],
    loaded: int,
) -> None:
    """Replay a workflow that lost the database, once it answers again.

    The wait doubles, up to the runtime's longest, for as long as its
    executions record nothing new: a step whose database stays away is run
    again less and less often, not every second forever. An execution that
    recorded something starts over from the shortest wait.

    cancel_workflow and adoption by another runtime end the wait at once,
    and the workflow with it: nothing runs again here.
    """
    first, longest = ctx.runtime.replay_backoff
    delay = ctx.replay_delay or first
    steps: dict[StepKey, StepRecord] = {}
    with anyio.CancelScope() as waiting:
        ctx.cancel_scope = waiting  # what cancel_local and RowChecks cancel
        if ctx.cancelled or ctx.adopted:
            waiting.cancel()
        while True:
            await anyio.sleep(delay)
            try:
                async with ctx.runtime.connection() as conn:
                    recorded = await steps_table.select_steps_of(conn, [ctx.workflow_id])
                steps = recorded[ctx.workflow_id]
                break
            except Exception:  # still unreachable: wait longer
                delay = min(delay * 2, longest)
    if ctx.adopted:  # the other runtime owns it now: waiters here read its row
        _release(ctx.runtime, ctx.workflow_id, future, Outcome(local=False))
        return
    if ctx.cancelled:  # its row is CANCELLED already
        error = WorkflowCancelledError(ctx.workflow_id)
        _release(ctx.runtime, ctx.workflow_id, future, Outcome(error=error))
        return
    again = spawn(
        ctx.runtime,
        entry,
        ctx.workflow_id,
        args,
        kwargs,
        steps,
        ctx.deadline_epoch_ms,
        future,
        fence=ctx.fence,
        branched=ctx.branched,
    )
    again.replay_delay = first if len(steps) > loaded else min(delay * 2, longest)
    # The same workflow, run again here: what observers know of it carries over.
    again.origin, again.queue_name = observers.REPLAY, ctx.queue_name
    again.recovery_attempt, again.trace_context = ctx.recovery_attempt, ctx.trace_context
