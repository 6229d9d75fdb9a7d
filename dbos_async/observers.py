"""Observer hooks: what the runtime tells tracing, metrics and logging as workflows run.

``DBOS(..., observers=[...])`` takes ``Observer`` subclasses; each overrides
the hooks it needs (the base class's do nothing). The runtime calls them on
the event loop, in the task the event happens in, so a hook may attach a
context variable (an OpenTelemetry span) that the workflow's or step's own
code then sees, and detach it in the matching ``_finished`` hook. A hook must
be quick and must not block. One that raises is logged, never passed on: an
observer never breaks a workflow.

With no observer the runtime makes one check (``runtime.observers``) where a
hook would be called, and builds no event.

Executions. A workflow runs one or more times: first when started (or
dequeued), again after a crash (recovery), an adoption by another runtime or
a resume. Each execution is one ``workflow_started`` and one
``workflow_finished``; ``WorkflowEvent.origin`` says how it began. A step
replayed from its record is no event at all (``workflow_finished`` counts
them). ``trace_context`` is what an observer captured when the workflow was
started (``start_context``) or enqueued (``workflow_enqueued``), stored with
the workflow, so every execution can join the caller's trace.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from dbos_async.logs import get_logger

if TYPE_CHECKING:
    from dbos_async.runtime import Runtime

logger = get_logger(__name__)

# How an execution began (WorkflowEvent.origin).
START = "start"  # started by start_workflow, a call, or a parent
DEQUEUE = "dequeue"  # claimed from a queue
RECOVERY = "recovery"  # its runtime died and this one (same executor) took it back
ADOPTION = "adoption"  # another executor's runtime died and this one took it
RESUME = "resume"  # resume_workflow, a fork or a restart ran it here
RECONCILE = "reconcile"  # a claim whose reply was lost, started late
REPLAY = "replay"  # run again here after it lost the database (no runtime died)

# How an execution ended (workflow_finished's ``status``).
SUCCESS = "SUCCESS"
ERROR = "ERROR"
CANCELLED = "CANCELLED"  # cancel_workflow or the deadline: not an error
STOPPED = "STOPPED"  # no outcome here: shutdown, a lost database, taken over elsewhere


@dataclass(frozen=True, slots=True)
class WorkflowEvent:
    """One execution of a workflow."""

    workflow_id: str
    name: str
    app_version: str
    executor_id: str
    origin: str
    queue_name: str | None = None
    recovery_attempt: int = 0
    trace_context: Mapping[str, str] | None = None
    # The call's arguments (for capture_payloads-style observers).
    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class StepEvent:
    """One run of a step's (or transaction's) body: every attempt is one."""

    workflow: WorkflowEvent
    step_id: int
    branch: str
    name: str
    kind: str  # "step" or "transaction"


@dataclass(frozen=True, slots=True)
class WaitEvent:
    """A durable wait of a workflow: ``sleep`` until a time, or ``recv`` on a topic."""

    workflow: WorkflowEvent
    kind: str  # "sleep" or "recv"
    step_id: int
    branch: str
    until: float  # epoch seconds (inf: no deadline)
    topic: str | None = None


class Observer:
    """Base class of observers: every hook does nothing. See the module docstring."""

    def runtime_launched(self, runtime: Runtime) -> None:
        """The runtime is up (observers that read the database start here)."""

    def runtime_stopping(self, runtime: Runtime) -> None:
        """The runtime is shutting down."""

    def start_context(self) -> Mapping[str, str] | None:
        """The caller's trace context, to store with a workflow it starts (None: none)."""
        return None

    def workflow_enqueued(
        self, workflow_id: str, name: str, queue_name: str
    ) -> Mapping[str, str] | None:
        """A workflow is being enqueued; returns the trace context to store with it.

        Called just before the write (the context goes in the row): an enqueue
        the database then refuses (a live deduplication ID, a taken workflow
        ID) has been reported too.
        """
        return None

    def workflow_started(self, workflow: WorkflowEvent) -> None:
        """An execution of a workflow begins (in its task)."""

    def workflow_dequeued(self, workflow: WorkflowEvent, waited_seconds: float) -> None:
        """It left its queue after ``waited_seconds`` (called before ``workflow_started``)."""

    def workflow_recovered(self, workflow: WorkflowEvent) -> None:
        """It was taken back after a crash, or adopted (``origin``), before it restarts."""

    def workflow_finished(
        self,
        workflow: WorkflowEvent,
        status: str,
        error: BaseException | None,
        output: Any,
        replayed_steps: int,
    ) -> None:
        """The execution ended: SUCCESS, ERROR, CANCELLED or STOPPED (see the constants)."""

    def workflow_cancelled(self, workflow_id: str) -> None:
        """cancel_workflow marked it CANCELLED (from anywhere in this process)."""

    def step_started(self, step: StepEvent, attempt: int) -> None:
        """A step's body starts its ``attempt``-th run (1 is the first)."""

    def step_retried(
        self, step: StepEvent, attempt: int, error: BaseException, delay_seconds: float
    ) -> None:
        """Attempt ``attempt`` failed with ``error``; the next runs after ``delay_seconds``."""

    def step_finished(
        self, step: StepEvent, status: str, error: BaseException | None, attempts: int, output: Any
    ) -> None:
        """The step is done: SUCCESS or ERROR after ``attempts`` runs of its body.

        CANCELLED or STOPPED: its workflow was cancelled, or its runtime
        stopped, while the body ran (``attempts`` is 0 then: not counted).
        """

    def wait_started(self, wait: WaitEvent) -> None:
        """A durable wait begins."""

    def wait_finished(self, wait: WaitEvent, timed_out: bool) -> None:
        """It ended: its time came (``timed_out``), or what it waited for arrived."""


def notify(observers: Sequence[Observer], hook: str, *args: Any) -> None:
    """Call ``hook`` on each observer; one that raises is logged and skipped."""
    for observer in observers:
        try:
            getattr(observer, hook)(*args)
        except Exception:
            logger.exception(
                "observer %r failed in %s (ignored)", observer, hook, extra={"action": "observer"}
            )


def collect_context(
    observers: Sequence[Observer], capture: Callable[[Observer], Any]
) -> str | None:
    """The trace context the observers capture, as stored (JSON; None: none)."""
    merged: dict[str, str] = {}
    for observer in observers:
        try:
            found = capture(observer)
            if found:
                merged.update({str(k): str(v) for k, v in found.items()})
        except Exception:
            logger.exception("observer %r failed capturing a trace context (ignored)", observer)
    return orjson.dumps(merged).decode() if merged else None


def load_context(stored: str | None) -> Mapping[str, str] | None:
    """A stored trace context back as a mapping (None, or unreadable: none)."""
    if not stored:
        return None
    try:
        found = orjson.loads(stored)
    except orjson.JSONDecodeError:
        return None
    return {str(k): str(v) for k, v in found.items()} if isinstance(found, dict) else None
