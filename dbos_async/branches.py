"""Branches: each task created by workflow code gets a position, synchronously at creation.

A workflow's own function runs in its root branch (path ``""``). Every task
that workflow code creates, by ``asyncio.create_task``/``ensure_future``,
``gather`` of coroutines, ``asyncio.TaskGroup`` or an anyio task group, is a
new branch whose path is its parent's path plus the number of tasks the parent
had created before it: ``"0"``, ``"1"``, then ``"1.0"`` for the first task
created by ``"1"``. All of those go through the event loop's task factory, so
the runtime installs one (``install``) that wraps whatever factory was set
before it (uvloop's, an eager one) and only adds the branch to the new task's
context. Task creation is synchronous and in program order, so the position
does not depend on timing, unlike anything taken when the task first runs.

Where the factory creates the task itself (no factory was set before), it
creates a ``BranchTask``, which refuses the two asyncio constructs whose
result is the order in which tasks finish: ``asyncio.wait`` with
``FIRST_COMPLETED``/``FIRST_EXCEPTION`` and ``asyncio.as_completed``. Replay
returns recorded steps at once, so that order would change; ``DBOS.wait_first``
records its winner instead.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Callable, Coroutine
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dbos_async.errors import NonDeterministicWorkflowError

if TYPE_CHECKING:
    from dbos_async.context import WorkflowContext

TaskFactory = Callable[..., "asyncio.Future[Any]"]


@dataclass(slots=True, eq=False)
class Branch:
    """One sequence of durable calls: the workflow's own, or a task it created.

    Only the task that owns a branch touches its counters, so they need no lock.
    """

    workflow: WorkflowContext
    path: str = ""
    origin: int = 0  # the root's next_step when this branch's top-level ancestor was created
    next_step: int = 0  # the step_id of this branch's next durable call
    tasks_created: int = 0
    # Above 0 while the branch's task runs something that is not workflow code:
    # a durable call (a step body, a write) or a runtime call (see outside).
    # A counter on the branch, not a ContextVar: setting one allocates.
    busy: int = 0

    def child(self) -> Branch:
        """The branch of a task this branch creates now."""
        position = self.tasks_created
        self.tasks_created = position + 1
        if self.path:
            return Branch(self.workflow, f"{self.path}.{position}", self.origin)
        return Branch(self.workflow, str(position), self.next_step)


current_branch: ContextVar[Branch | None] = ContextVar("dbos_async_branch", default=None)
"""The branch of the running task inside a workflow; None outside workflows."""


def workflow_code() -> Branch | None:
    """The branch of the running workflow code; None outside it or inside a durable call."""
    branch = current_branch.get()
    return branch if branch is not None and not branch.busy else None


class outside:  # lower case: used like a function, ``with outside():``
    """Run a block as not workflow code: tasks it creates (a library's, ours) take no position.

    Durable calls run their work this way (``checkpoint.Call``), and so do the
    runtime's calls that workflow code may await (handles, management): what
    they do internally, which can depend on timing, never shifts the positions
    of the workflow's own tasks. It marks the branch of the task running the
    block, which is not always the branch a call was made in: a coroutine made
    in one task may run in another (``gather`` wraps it in a task of its own).
    """

    __slots__ = ("_branch",)

    def __enter__(self) -> None:
        branch = self._branch = current_branch.get()
        if branch is not None:
            branch.busy += 1

    def __exit__(self, *exc: object) -> None:
        if self._branch is not None:
            self._branch.busy -= 1


class _BranchingFactory:
    """The loop's task factory: gives each task created by workflow code its branch."""

    __slots__ = ("previous",)

    def __init__(self, previous: TaskFactory | None) -> None:
        self.previous = previous

    def __call__(
        self, loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, Any], **kwargs: Any
    ) -> asyncio.Future[Any]:
        parent = current_branch.get()
        if parent is None or parent.busy:
            if parent is not None:
                # Made by a step body or a library inside a durable call: outside
                # the workflow's structure for good, even after that call returns.
                kwargs["context"] = _with_branch(kwargs.get("context"), None)
            if self.previous is not None:
                return self.previous(loop, coro, **kwargs)
            return asyncio.Task(coro, loop=loop, **kwargs)
        kwargs["context"] = _with_branch(kwargs.get("context"), parent.child())
        if self.previous is not None:
            task = self.previous(loop, coro, **kwargs)
        else:
            task = BranchTask(coro, loop=loop, **kwargs)
        ctx = parent.workflow
        if ctx.tasks is None:
            ctx.tasks = set()
        ctx.tasks.add(task)
        task.add_done_callback(ctx.tasks.discard)
        return task


def _with_branch(given: contextvars.Context | None, branch: Branch | None) -> contextvars.Context:
    # Copied, never the caller's own context object: one context may be handed
    # to several tasks, and each needs its own branch.
    context = contextvars.copy_context() if given is None else given.copy()
    context.run(current_branch.set, branch)
    return context


def install(loop: asyncio.AbstractEventLoop) -> None:
    """Make ``loop`` give branches to tasks created by workflow code (idempotent).

    A factory set later by someone else replaces this one; the runtime calls
    this again before each workflow starts, which wraps that one in turn.
    """
    current = loop.get_task_factory()
    if not isinstance(current, _BranchingFactory):
        # typeshed's factory type leaves out the name/context keywords loops pass.
        loop.set_task_factory(_BranchingFactory(current))  # type: ignore[arg-type]


def uninstall(loop: asyncio.AbstractEventLoop) -> None:
    """Put back the factory that was set before ``install``, if ours is still in place."""
    current = loop.get_task_factory()
    if isinstance(current, _BranchingFactory):
        loop.set_task_factory(current.previous)


class BranchTask(asyncio.Task):  # type: ignore[type-arg]
    """A task of a workflow branch that refuses order-observing waits from workflow code."""

    def add_done_callback(
        self,
        fn: Callable[[BranchTask], object],
        *,
        context: contextvars.Context | None = None,
    ) -> None:
        """Register ``fn``; refuse asyncio constructs whose outcome depends on timing.

        Raises:
            NonDeterministicWorkflowError: workflow code passed this task to
                ``asyncio.wait(return_when=FIRST_COMPLETED|FIRST_EXCEPTION)`` or
                ``asyncio.as_completed``.
        """
        branch = workflow_code()
        if branch is not None:
            construct = _order_observer(fn)
            if construct is not None:
                raise _timing_dependent(branch, construct)
        super().add_done_callback(fn, context=context)


_AS_COMPLETED = frozenset(
    {
        "as_completed.<locals>._on_completion",  # 3.11, 3.12
        "_AsCompletedIterator._handle_completion",  # 3.13+
    }
)
_WAIT = "_wait.<locals>._on_completion"


def _order_observer(fn: Callable[..., object]) -> str | None:
    """The asyncio construct behind a done callback, if it observes completion order."""
    name = getattr(fn, "__qualname__", None)
    if name in _AS_COMPLETED:
        return "asyncio.as_completed"
    if name == _WAIT:
        return_when = _closure_value(fn, "return_when")
        if return_when in (asyncio.FIRST_COMPLETED, asyncio.FIRST_EXCEPTION):
            return f"asyncio.wait(return_when={return_when})"
    return None


def _closure_value(fn: Callable[..., object], name: str) -> object:
    code = getattr(fn, "__code__", None)
    closure = getattr(fn, "__closure__", None)
    if code is None or closure is None or name not in code.co_freevars:
        return None
    return closure[code.co_freevars.index(name)].cell_contents


def _timing_dependent(branch: Branch, construct: str) -> NonDeterministicWorkflowError:
    ctx = branch.workflow
    return NonDeterministicWorkflowError(
        ctx.workflow_id,
        branch.next_step,
        construct,
        construct,
        branch=branch.path,
        message=(
            f"Workflow {ctx.workflow_id!r} used {construct} on tasks it created: which "
            "of them finishes first depends on timing, and replay returns recorded steps "
            "at once, so the result would change. Use DBOS.wait_first(...), which "
            "records its winner, or wait for all of them (gather, TaskGroup)."
        ),
    )
