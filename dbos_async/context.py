"""Per-task state: the running workflow, the running step, and the ``Set*`` options.

Everything here lives in ContextVars, so tasks spawned inside a workflow
(``asyncio.gather``, ``TaskGroup``) share their workflow's context object. Each
such task also gets its own branch (``branches.current_branch``), which
numbers its durable calls.
"""

from __future__ import annotations

from contextvars import ContextVar, Token
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import asyncio

    import anyio

    from dbos_async.observers import WorkflowEvent
    from dbos_async.runtime import Runtime
    from dbos_async.systemdb.pool import Connection
    from dbos_async.systemdb.steps import StepKey, StepRecord


@dataclass(slots=True, eq=False)
class WorkflowContext:
    """The state of one workflow execution, shared by every task it spawns."""

    runtime: Runtime
    workflow_id: str
    name: str
    recorded: dict[StepKey, StepRecord] = field(default_factory=dict)
    # False for histories recorded before branch IDs (0006_branches.sql): their
    # calls are numbered by the one counter below, shared by all tasks.
    branched: bool = True
    next_step_id: int = 0
    cancel_scope: anyio.CancelScope | None = None
    deadline_epoch_ms: int | None = None
    cancelled: bool = False  # cancel_workflow or the deadline, never a shutdown
    fence: int = 0  # the fencing token this runtime holds on the workflow's row
    adopted: bool = False  # another runtime took the workflow over: stop, record nothing
    finished: bool = False  # its function returned, or it lost: no durable call may follow
    # A durable call lost the database: this execution records nothing more, and
    # replays from its records once the database answers (see checkpoint.is_outage).
    lost: bool = False
    replay_delay: float = 0.0  # the wait before replaying it if it loses the database (0: first)
    # Calls interrupted by a cancellation of the workflow's own making, recorded
    # before its next checkpoint (see checkpoint.settle). Made on first use,
    # like ``tasks`` (its live branch tasks): most workflows need neither.
    interrupts: list[StepRecord] | None = None
    tasks: set[asyncio.Future[Any]] | None = None
    stream_lock: asyncio.Lock | None = None  # stream writes go one at a time
    # A replay check (checker.py): every call is served from the record; what
    # the check finds is noted here, whatever the workflow's code does with
    # the exceptions that say it (checkpoint.HistoryEnd, earlier).
    checking: Check | None = None
    # For observers (observers.py): how this execution began, and what it
    # carries from its row; ``event`` is built at its start when any observer is.
    origin: str = "start"
    queue_name: str | None = None
    recovery_attempt: int = 0
    trace_context: str | None = None
    queue_wait_seconds: float | None = None  # enqueue to a first dequeue (None: not one)
    event: WorkflowEvent | None = None
    replayed: int = 0  # calls served from the record in this execution

    def take_step_id(self) -> int:
        """Return the next step ID of a flat-numbered history (see ``branched``)."""
        step_id = self.next_step_id
        self.next_step_id += 1
        return step_id


@dataclass(slots=True, eq=False)
class Check:
    """What a replay check found: the first divergence, and where the history ended."""

    divergence: BaseException | None = None
    end: BaseException | None = None  # a checkpoint.HistoryEnd


class FencedOff(BaseException):
    """This runtime may no longer run the workflow: another one adopted it, or it ended.

    Raised by a checkpoint write whose fence is stale, or whose workflow is no
    longer PENDING (cancelled or deleted meanwhile, maybe while this runtime
    missed the notification). A BaseException, so the workflow's own ``except
    Exception`` cannot swallow it; the runtime stops the workflow without
    recording anything.
    """

    def __init__(self, workflow_id: str, reason: str = "was adopted by another executor") -> None:
        super().__init__(workflow_id)
        self.workflow_id = workflow_id
        self.reason = reason


@dataclass(slots=True, eq=False)
class Running:
    """A workflow claimed by this runtime: its name, its outcome future, its context."""

    name: str
    future: asyncio.Future[Any]
    ctx: WorkflowContext | None = None  # None until its task is spawned


current_workflow: ContextVar[WorkflowContext | None] = ContextVar(
    "dbos_async_workflow", default=None
)
current_step_id: ContextVar[int | None] = ContextVar("dbos_async_step", default=None)
current_connection: ContextVar[Connection | None] = ContextVar(
    "dbos_async_connection", default=None
)
_next_workflow_id: ContextVar[str | None] = ContextVar("dbos_async_next_id", default=None)
_workflow_timeout: ContextVar[float | None] = ContextVar("dbos_async_timeout", default=None)

_INT32 = (-(2**31), 2**31 - 1)


@dataclass(frozen=True, slots=True)
class EnqueueOptions:
    """Options of one enqueue (see ``SetEnqueueOptions``); checked when built.

    Raises:
        ValueError: an option is out of range.
    """

    deduplication_id: str | None = None
    priority: int | None = None
    app_version: str | None = None
    queue_partition_key: str | None = None
    delay_seconds: float | None = None

    def __post_init__(self) -> None:
        from dbos_async.validation import check_identifier, check_seconds

        for name in ("deduplication_id", "app_version", "queue_partition_key"):
            value = getattr(self, name)
            if value is not None:
                check_identifier(value, name)
        priority = self.priority
        if priority is not None and (
            not isinstance(priority, int)
            or isinstance(priority, bool)
            or not _INT32[0] <= priority <= _INT32[1]
        ):
            raise ValueError(f"priority must be a 32-bit int, got {priority!r}")
        if self.delay_seconds is not None:
            check_seconds(self.delay_seconds, "delay_seconds", zero_ok=True)


_NO_OPTIONS = EnqueueOptions()
_enqueue_options: ContextVar[EnqueueOptions | None] = ContextVar(
    "dbos_async_enqueue_options", default=None
)


def take_next_workflow_id() -> str | None:
    """Return the ID set by ``SetWorkflowID`` for the next start, consuming it."""
    workflow_id = _next_workflow_id.get()
    if workflow_id is not None:
        _next_workflow_id.set(None)
    return workflow_id


def enqueue_options() -> EnqueueOptions:
    """The options set by the innermost ``SetEnqueueOptions`` (all None outside one)."""
    return _enqueue_options.get() or _NO_OPTIONS


def workflow_timeout() -> float | None:
    """The timeout in seconds set by the innermost ``SetWorkflowTimeout``."""
    return _workflow_timeout.get()


class _Setter:
    """A context manager that sets one ContextVar for the length of a ``with`` block."""

    _var: ContextVar[Any]

    def __init__(self, value: Any) -> None:
        self._value = value
        self._token: Token[Any] | None = None

    def __enter__(self) -> None:
        self._token = self._var.set(self._value)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._token is not None
        self._var.reset(self._token)
        self._token = None


_on_conflict: ContextVar[str] = ContextVar("dbos_async_on_conflict", default="return")

ON_CONFLICT = ("return", "raise")


class _OnConflict(_Setter):
    """The ``on_conflict`` of the ``SetWorkflowID`` block it belongs to."""

    _var = _on_conflict


class SetWorkflowID(_Setter):
    """Use ``workflow_id`` for the next workflow started (or enqueued) in this block.

    The ID is an idempotency key: starting again under an ID that exists runs
    nothing and returns the first execution's handle. ``on_conflict`` says
    what happens when the inputs differ from the first execution's:
    ``"return"`` (the default, as in DBOS) returns its handle all the same;
    ``"raise"`` raises ``WorkflowConflictError`` (so an HTTP service can
    answer 409 to a key reused with another body). Inputs are compared as the
    JSON they are recorded as: key order in a dict does not matter.
    """

    _var = _next_workflow_id

    def __init__(self, workflow_id: str, on_conflict: str = "return") -> None:
        from dbos_async.validation import check_workflow_id

        if on_conflict not in ON_CONFLICT:
            raise ValueError(f"on_conflict must be 'return' or 'raise', got {on_conflict!r}")
        super().__init__(check_workflow_id(workflow_id))
        self._policy = _OnConflict(on_conflict)

    def __enter__(self) -> None:
        super().__enter__()
        self._policy.__enter__()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._policy.__exit__(exc_type, exc, tb)
        super().__exit__(exc_type, exc, tb)


def strict_inputs() -> bool:
    """Whether the innermost ``SetWorkflowID`` asked for ``on_conflict="raise"``."""
    return _on_conflict.get() == "raise"


class SetWorkflowTimeout(_Setter):
    """Give workflows started in this block a durable start-to-close deadline (seconds)."""

    _var = _workflow_timeout

    def __init__(self, timeout_seconds: float | None) -> None:
        from dbos_async.validation import check_seconds

        if timeout_seconds is not None:
            check_seconds(timeout_seconds, "the workflow timeout")
        super().__init__(timeout_seconds)


class SetEnqueueOptions(_Setter):
    """Options for every ``Queue.enqueue`` in this block (an inner block replaces them).

    Args:
        deduplication_id: While a workflow enqueued with this ID is ENQUEUED or
            PENDING on the queue, enqueuing another with it raises
            ``QueueDeduplicatedError``.
        priority: Lower runs first (queues with ``priority_enabled``); default 0.
        app_version: Only runtimes of this app version dequeue it; default the
            enqueuing runtime's version.
        queue_partition_key: The partition of a ``partition_queue`` queue; its
            limits apply per key. Required there, refused elsewhere.
        delay_seconds: Not dequeued before this many seconds from now.

    Raises:
        ValueError: an option is out of range.
    """

    _var = _enqueue_options

    def __init__(
        self,
        *,
        deduplication_id: str | None = None,
        priority: int | None = None,
        app_version: str | None = None,
        queue_partition_key: str | None = None,
        delay_seconds: float | None = None,
    ) -> None:
        super().__init__(
            EnqueueOptions(
                deduplication_id=deduplication_id,
                priority=priority,
                app_version=app_version,
                queue_partition_key=queue_partition_key,
                delay_seconds=delay_seconds,
            )
        )
