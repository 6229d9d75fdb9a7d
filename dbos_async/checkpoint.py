"""The checkpoint protocol: how a durable call is identified, replayed and recorded.

Every durable primitive (steps, transactions, child workflows, enqueues,
sleep, send/recv, events, streams, ``wait_first``, ``now``/``random``/``uuid4``)
goes through this module, in four moves:

1. ``take(name)``, synchronously when the call is made, before its first
   ``await``: the call's identity, ``(branch, step_id)``. ``step_id`` is the
   call's order within its branch. A branch is a task created by workflow
   code: its position is its parent's branch plus the number of tasks the
   parent had created before it, taken synchronously when the task is created
   (``branches.py`` installs the loop's task factory for that). Neither part
   depends on how tasks interleave, so replay finds each call's own record.
2. ``with call:`` around the call's execution. Durable calls are not workflow
   code: what a step body or a library does inside them creates no branch.
   A cancellation of the workflow's own making (a timeout, a ``TaskGroup``,
   ``task.cancel()``) that lands in the call marks it interrupted.
3. ``call.recorded``, taken out of the workflow's records when the identity
   was taken: the outcome an earlier execution recorded, if any;
   ``await replay(call)`` checks it against the call's name and returns it.
   An interrupted call waits, on replay, until it is cancelled again, as it
   was the first time.
4. ``await record(call, ...)``, or ``call.row(...)`` for statements that write
   their own checkpoint (after ``await settle(call.ctx)``): the first writer
   of a key wins, and the winner's outcome is what the call returns.

Interruptions are recorded lazily, by ``settle``, before the workflow's next
checkpoint or its outcome: once the workflow has gone on after an
interruption, replay must see it too, even if the call had recorded an
outcome while the cancellation was landing.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any

import anyio

from dbos_async import serialization
from dbos_async.branches import Branch, current_branch
from dbos_async.context import Check, FencedOff
from dbos_async.errors import (
    DatabaseUnavailableError,
    NonDeterministicWorkflowError,
    NotInWorkflowError,
)
from dbos_async.systemdb import steps as steps_table
from dbos_async.systemdb.pool import is_lost_connection, run_idempotent
from dbos_async.systemdb.steps import StepRecord

if TYPE_CHECKING:
    from dbos_async.context import WorkflowContext
    from dbos_async.notifications import Watch

SLEEP_STEP = "DBOS.sleep"

INTERRUPTED = (
    '{"type":"CancelledError","module":"asyncio.exceptions",'
    '"message":"interrupted by a cancellation inside the workflow","args":[],"attrs":{}}'
)
"""The recorded error of a call that a cancellation of the workflow's own making interrupted."""


class Call:
    """One durable call of a workflow: its identity, taken when it was made."""

    __slots__ = ("_running", "branch", "ctx", "name", "origin", "recorded", "replaying", "step_id")

    # Made by take() alone, without an __init__ call: it is on every step's path.
    ctx: WorkflowContext
    branch: str
    step_id: int
    origin: int
    name: str
    recorded: StepRecord | None  # what an earlier execution recorded, looked up by take()
    replaying: bool
    _running: Branch | None

    def __repr__(self) -> str:
        return f"Call({self.ctx.workflow_id!r}, {self.branch!r}, {self.step_id}, {self.name!r})"

    def __enter__(self) -> Call:
        # The branch of the task running the call, which need not be the one
        # it was made in (gather wraps a coroutine in a task of its own).
        running = self._running = current_branch.get()
        if running is not None:
            running.busy += 1
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._running is not None:
            self._running.busy -= 1
            self._running = None
        if exc_type is None or exc is None:
            return
        if issubclass(exc_type, asyncio.CancelledError):
            _interrupted(self)
        elif is_outage(exc):
            # Workflow code may catch it and go on, down a path that replay,
            # once the call succeeds, would not take: record nothing more.
            self.ctx.lost = self.ctx.finished = True

    def row(
        self,
        *,
        output: str | None = None,
        error: str | None = None,
        child_workflow_id: str | None = None,
        started_at: int | None = None,
        attempts: int | None = None,
        label: str | None = None,
    ) -> StepRecord:
        """This call's checkpoint row with the given outcome, completed now."""
        ctx = self.ctx
        completed = ctx.runtime.clock.now_ms()
        return StepRecord(  # positional: this is on every step's path
            ctx.workflow_id,
            self.step_id,
            self.name,
            output,
            error,
            child_workflow_id,
            completed if started_at is None else started_at,
            completed,
            ctx.fence,
            self.branch,
            self.origin,
            attempts,
            label,
        )

    def child_id(self) -> str:
        """The ID of a child workflow started (or enqueued) by this call, unless one was set."""
        if self.branch:
            return f"{self.ctx.workflow_id}-{self.branch}:{self.step_id}"
        return f"{self.ctx.workflow_id}-{self.step_id}"


def take(name: str) -> Call | None:
    """The identity of a durable call named ``name`` made now; None outside workflow code.

    Workflow code is a workflow's own function and the tasks it creates, not
    the body of a step (which is not replayed) nor the inside of another
    durable call.

    Raises:
        NotInWorkflowError: the calling task outlived its workflow, which has
            finished: nothing it does can be recorded any more.
        DatabaseUnavailableError: an earlier call of this execution lost the
            database: nothing more is recorded until it replays.
    """
    branch = current_branch.get()
    if branch is None or branch.busy:  # see branches.workflow_code
        return None
    ctx = branch.workflow
    if ctx.finished:
        if ctx.lost:
            raise DatabaseUnavailableError(
                f"{name} cannot be recorded: workflow {ctx.workflow_id!r} lost the database "
                "in an earlier call of this execution, which replays from its records "
                "once the database answers"
            )
        raise NotInWorkflowError(
            f"{name} was called from a task that outlived its workflow {ctx.workflow_id!r}, "
            "which has finished: it cannot be made durable. Await every task a workflow "
            "creates before the workflow returns."
        )
    call = Call.__new__(Call)
    call.ctx = ctx
    call.name = name
    call.replaying = False
    call._running = None
    if ctx.branched:
        call.branch = path = branch.path
        call.step_id = step_id = branch.next_step
        branch.next_step = step_id + 1
        call.origin = branch.origin
    else:  # a history recorded with one counter for all tasks
        call.branch = path = ""
        call.step_id = step_id = ctx.take_step_id()
        call.origin = 0
    recorded = ctx.recorded
    # Looked up now (records are loaded once, when the workflow starts), so a
    # fresh call awaits nothing to find out that it must run. And taken out:
    # no other call has this identity in this execution, so from here on the
    # call holds the record, and a workflow that has replayed its history
    # holds none of it (a long-running one would otherwise keep it all).
    call.recorded = recorded.pop((path, step_id), None) if recorded else None
    if call.recorded is None and ctx.checking and name != SLEEP_STEP:
        # Before the call runs anything (a step's body). A deadline's timer
        # may be unrecorded while its recv replays: it ends the history only
        # when it would be written (record).
        raise _ended(ctx.checking, call)
    return call


def _ended(check: Check, call: Call) -> HistoryEnd:
    end = HistoryEnd(call)
    if check.end is None:
        check.end = end
    return end


class HistoryEnd(BaseException):
    """A replay check reached a call with no record: the history ends here (see checker.py).

    A BaseException, so the workflow's own ``except Exception`` does not catch it.
    """

    def __init__(self, call: Call) -> None:
        self.call = call
        self.where = position(call.branch, call.step_id)
        super().__init__(f"no call is recorded at {self.where}")


def position(branch: str, step_id: int) -> str:
    """A call's position for people: ``step 3``, or ``branch 0.1 step 2``."""
    return f"branch {branch} step {step_id}" if branch else f"step {step_id}"


def peek(name: str) -> tuple[WorkflowContext, StepRecord | None] | None:
    """What an earlier execution recorded where the next call of this branch would be.

    Takes nothing: the next ``take`` in this branch still gets that position
    (``DBOS.patch`` uses it to step aside for the call recorded there). None
    outside workflow code, like ``take``; else the workflow and the record, if any.

    Raises:
        NotInWorkflowError, DatabaseUnavailableError: as ``take``.
    """
    branch = current_branch.get()
    if branch is None or branch.busy:
        return None
    ctx = branch.workflow
    if ctx.finished:
        take(name)  # raises: nothing can be recorded any more, and take says why
    key = (branch.path, branch.next_step) if ctx.branched else ("", ctx.next_step_id)
    return ctx, ctx.recorded.get(key) if ctx.recorded else None


async def replay(call: Call) -> StepRecord:
    """``call.recorded``, the outcome an earlier execution recorded, once checked.

    Reads nothing: a workflow's records are loaded once when it (re)starts.

    Raises:
        NonDeterministicWorkflowError: the record was made by another function.
    """
    assert call.recorded is not None
    call.ctx.replayed += 1  # observers count them (observers.py)
    return await earlier(call, call.recorded)


async def record(
    call: Call,
    *,
    output: str | None = None,
    error: str | None = None,
    child_workflow_id: str | None = None,
    started_at: int | None = None,
    attempts: int | None = None,
    label: str | None = None,
) -> StepRecord | None:
    """Checkpoint ``call``'s outcome. One round trip, group-committed with other workflows'.

    Returns None when this outcome was recorded, else the record an earlier
    execution made first, whose outcome the call must return instead.

    Raises:
        NonDeterministicWorkflowError: the earlier record was made by another function.
    """
    ctx = call.ctx
    if ctx.checking:
        raise _ended(ctx.checking, call)
    if ctx.interrupts:
        await settle(ctx)
    mine = call.row(
        output=output,
        error=error,
        child_workflow_id=child_workflow_id,
        started_at=started_at,
        attempts=attempts,
        label=label,
    )
    winner: StepRecord = await ctx.runtime.step_writer.submit(mine)
    return None if winner is mine else await earlier(call, winner)


async def earlier(call: Call, found: StepRecord) -> StepRecord:
    """``found``, the record of an earlier execution of ``call``, once checked.

    If that execution was interrupted here, so is this one: it waits until the
    same cancellation (a timeout, a TaskGroup, ``wait_first``) arrives again.

    Raises:
        NonDeterministicWorkflowError: ``found`` was made by another function.
    """
    if found.function_name != call.name:
        diverged = NonDeterministicWorkflowError(
            call.ctx.workflow_id,
            call.step_id,
            found.function_name,
            call.name,
            branch=call.branch,
        )
        check = call.ctx.checking
        if check is not None and check.divergence is None:
            check.divergence = diverged  # noted: the code may catch what it raises
        raise diverged
    if found.error == INTERRUPTED:
        call.replaying = True
        await asyncio.get_running_loop().create_future()
    return found


async def fetch_recorded(call: Call) -> StepRecord:
    """Read the record of ``call`` that an earlier execution wrote. One round trip.

    For statements that write their own checkpoint and found it written.

    Raises:
        FencedOff: there is none, so our statement wrote nothing for a stale fence.
    """
    async with call.ctx.runtime.connection() as conn:
        found = await steps_table.select_step(conn, call.ctx.workflow_id, call.branch, call.step_id)
    if found is None:
        raise FencedOff(call.ctx.workflow_id)
    return await earlier(call, found)


def is_outage(exc: BaseException) -> bool:
    """Whether ``exc`` means the database was lost, which is never a call's outcome.

    A durable call that raises it records nothing; its workflow replays from
    its records once the database answers. One rebuilt from a record (an
    earlier release recorded outages) is that call's outcome, and replays as such.
    """
    return is_lost_connection(exc) and not serialization.is_recorded(exc)


def _interrupted(call: Call) -> None:
    """A cancellation landed in ``call``: note it, unless the workflow itself is stopping."""
    ctx = call.ctx
    if call.replaying or stopping(ctx):
        return
    if ctx.interrupts is None:
        ctx.interrupts = []
    ctx.interrupts.append(call.row(error=INTERRUPTED))


def stopping(ctx: WorkflowContext) -> bool:
    """Whether the workflow is being stopped from outside its code.

    That is cancel_workflow, its deadline, adoption by another runtime, a
    shutdown, or the end of its function (which cancels the tasks it left
    running): those cancellations are never recorded, and the workflow
    replays from its records.
    """
    scope = ctx.cancel_scope
    return (
        ctx.finished
        or ctx.adopted
        or (scope is not None and scope.cancel_called)
        or ctx.runtime.stopping
    )


async def settle(ctx: WorkflowContext) -> None:
    """Record the interruptions noted so far. One round trip; none when there are none."""
    if not ctx.interrupts:
        return
    rows = list(ctx.interrupts)
    await run_idempotent(
        ctx.runtime.pool,
        lambda conn: steps_table.record_interruptions(
            conn, ctx.workflow_id, ctx.fence, rows, INTERRUPTED, ctx.runtime.clock.now_ms()
        ),
    )
    ctx.interrupts = [r for r in ctx.interrupts or () if all(r is not w for w in rows)]


# -- durable time -----------------------------------------------------------------------


async def wake_time(
    call: Call, seconds: float, *, wake_at: float | None = None, label: str | None = None
) -> float:
    """The epoch time ``seconds`` from now (or ``wake_at``), recorded as ``call``.

    Returns what was recorded, by this call or an earlier execution. Durable
    sleeps and the timeouts of ``recv``/``get_event`` use it, so a recovered
    workflow keeps its original schedule. One round trip, none on replay.
    ``label`` says what the time is for, where ``call.name`` does not.
    """
    found = await replay(call) if call.recorded is not None else None
    if found is None:
        at = call.ctx.runtime.clock.time() + seconds if wake_at is None else wake_at
        found = await record(call, output=_encode_time(at), label=label)
        if found is None:
            return at
    return _decode_time(found.output)


def _encode_time(at: float) -> str:
    # JSON has no infinity: null is "no deadline" (recv(timeout_seconds=inf)).
    return serialization.encode(None if math.isinf(at) else at)


def _decode_time(raw: str | None) -> float:
    at = serialization.decode(raw)
    return math.inf if at is None else float(at)


def arm_timer(call: Call, wake_at: float, label: str | None = None) -> asyncio.Future[float]:
    """Record ``wake_at`` as ``call`` in the background; the future gives what won.

    The write belongs to the runtime's task group, not to the waiter, so a
    waiter that gets its message first does not wait for it.
    """
    armed: asyncio.Future[float] = asyncio.get_running_loop().create_future()

    async def write() -> None:
        # Never raises into the runtime's task group: the waiter gets the outcome.
        try:
            armed.set_result(await wake_time(call, 0, wake_at=wake_at, label=label))
        except anyio.get_cancelled_exc_class():
            armed.cancel()
            raise
        except BaseException as exc:  # a lost database, or FencedOff
            armed.set_exception(exc)
            armed.exception()  # marked retrieved: a waiter that got its message never asks

    call.ctx.runtime.workflow_group.start_soon(write)
    return armed


async def durable_wait(
    timer: Call,
    seconds: float,
    watch: Watch,
    attempt: Callable[[], Awaitable[tuple[bool, Any]]],
    label: str,
) -> tuple[bool, Any]:
    """Call ``attempt`` until it finds something or the durable deadline passes.

    ``label`` names the deadline for people (it is recorded as a DBOS.sleep).

    The deadline (now + ``seconds``, or what an earlier execution recorded as
    ``timer``) is recorded in the background: a message that arrives
    meanwhile is not delayed by that write, and the deadline is only acted on
    once it is durable. Returns ``(False, None)`` at the deadline.
    """
    found, value = await attempt()
    if found:
        return found, value
    clock = timer.ctx.runtime.clock
    recorded = await replay(timer) if timer.recorded is not None else None
    armed: asyncio.Future[float] | None = None
    if recorded is not None:
        wake_at = _decode_time(recorded.output)
    else:
        wake_at = clock.time() + seconds
        armed = arm_timer(timer, wake_at, label)
    while True:
        left = wake_at - clock.time()
        if left <= 0:
            if armed is None:
                return False, None
            # Act on the deadline only once it is recorded (an earlier execution's wins).
            wake_at, armed = await asyncio.shield(armed), None
            continue
        await watch.wait(left, clock)
        found, value = await attempt()
        if found:
            return found, value
