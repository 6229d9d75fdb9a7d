"""``DBOS``: the runtime object users hold, and the ``DBOS.*`` facade.

Each classmethod resolves the runtime (the current workflow's, else the one
launched most recently) and calls one function in the module for its concept.
No logic lives here.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging
import os
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from datetime import datetime
from types import TracebackType
from typing import Any, ClassVar, Concatenate, Generic, ParamSpec, TypeVar, Unpack

from dbos_async import (
    branches,
    management,
    messaging,
    patching,
    scheduler,
    streams,
    values,
    versions,
)
from dbos_async import handle as handle_module
from dbos_async import step as step_module
from dbos_async import transaction as transaction_module
from dbos_async import workflow as workflow_module
from dbos_async.clock import REAL, Clock
from dbos_async.context import current_connection, current_step_id, current_workflow
from dbos_async.errors import NotInWorkflowError
from dbos_async.handle import WorkflowHandle
from dbos_async.logs import APP_LOGGER, get_logger
from dbos_async.models import AppVersion, StepInfo, WorkflowStatus
from dbos_async.observers import Observer
from dbos_async.runtime import Runtime, active_runtime, resolve_config
from dbos_async.systemdb.pool import Connection

P = ParamSpec("P")
R = TypeVar("R")


class _DBOSMeta(type):
    """Class-level properties: ``DBOS.workflow_id``, ``DBOS.step_id``, ``DBOS.connection``."""

    @property
    def workflow_id(cls) -> str | None:
        """The ID of the current workflow, or None outside workflows."""
        ctx = current_workflow.get()
        return ctx.workflow_id if ctx is not None else None

    @property
    def step_id(cls) -> int | None:
        """The ID of the current step, or None outside steps."""
        ctx = current_workflow.get()
        step_id = current_step_id.get()
        return step_id if ctx is not None and step_id is not None and step_id >= 0 else None

    @property
    def connection(cls) -> Connection:
        """The asyncpg connection of the current ``@DBOS.transaction``.

        Raises:
            NotInWorkflowError: called outside a transaction body.
        """
        conn = current_connection.get()
        if conn is None:
            raise NotInWorkflowError("DBOS.connection is only available inside @DBOS.transaction")
        return conn


class _runtime_method(Generic[P, R]):
    """A facade method: on the class it acts on the active runtime, on an instance on its own.

    ``DBOS.get_workflow_status(i)`` picks the current workflow's runtime, else the
    one launched last; ``dbos.get_workflow_status(i)`` always uses ``dbos``.
    """

    def __init__(self, fn: Callable[Concatenate[Runtime | None, P], R]) -> None:
        if inspect.iscoroutinefunction(fn):
            # A management call awaited by workflow code is not a checkpoint:
            # what it does internally (asyncpg's tasks) must take no position
            # in the workflow's branches.
            fn = _outside_branches(fn)
        self._fn = fn
        self.__doc__ = fn.__doc__
        signature = inspect.signature(fn)
        # What help() and editors show: the call as users write it, without the runtime.
        self._signature = signature.replace(parameters=list(signature.parameters.values())[1:])
        self._on_class: Callable[P, R] | None = None

    def __get__(self, obj: DBOS | None, cls: type | None = None) -> Callable[P, R]:
        if obj is not None:
            return self._bind(obj._runtime)
        if self._on_class is None:
            self._on_class = self._bind(None)
        return self._on_class

    def _bind(self, runtime: Runtime | None) -> Callable[P, R]:
        fn = self._fn

        def bound(*args: P.args, **kwargs: P.kwargs) -> R:
            return fn(runtime, *args, **kwargs)

        functools.update_wrapper(bound, fn)
        bound.__signature__ = self._signature  # type: ignore[attr-defined]
        return bound


def _outside_branches(fn: Callable[P, Any]) -> Callable[P, Any]:
    @functools.wraps(fn)
    async def run(*args: P.args, **kwargs: P.kwargs) -> Any:
        with branches.outside():
            return await fn(*args, **kwargs)

    return run


class _WorkflowStarter:
    """Start a workflow and return its handle once it is durably recorded.

    ``DBOS.start_workflow(fn, *args, **kwargs)``: ``fn`` is a ``@DBOS.workflow``
    function. On the class it uses the active runtime, on an instance its own.
    Inside a workflow this starts a child workflow (one step of the parent).
    """

    __slots__ = ("_runtime",)

    def __init__(self, runtime: Runtime | None) -> None:
        self._runtime = runtime

    def __call__(
        self, fn: Callable[P, Coroutine[Any, Any, R]], *args: P.args, **kwargs: P.kwargs
    ) -> Coroutine[Any, Any, WorkflowHandle[R]]:
        """Start a workflow and return its handle once it is durably recorded.

        Inside a workflow this starts a child workflow (one step of the parent).
        """
        entry = workflow_module.entry_of(fn)
        return workflow_module.start_soon(entry, args, kwargs, self._runtime)


class _start_workflow:
    def __get__(self, obj: DBOS | None, cls: type | None = None) -> _WorkflowStarter:
        return _WorkflowStarter(obj._runtime if obj is not None else None)


class DBOS(metaclass=_DBOSMeta):
    """A durable-workflow runtime over Postgres.

    Args:
        database_url: Postgres URL; None means ``$DBOS_DATABASE_URL``, then an
            embedded Postgres in ``./.dbos_async/`` (the ``embedded`` extra).
        app_name: The application's name.
        app_version: Recovery only resumes workflows of this version; None means
            ``$DBOS_APP_VERSION``, then a hash of the registered workflows' source.
        executor_id: Which workflows a restarted process looks after; None
            means ``$DBOS_EXECUTOR_ID``, then ``"local"``. Many processes may
            share it: none ever takes over another's live workflows (each
            runtime is an instance of its own; see "How it works").
        schema: The Postgres schema holding the system tables.
        pool_size: Most connections to the system database.
        data_dir: Where the embedded Postgres keeps its data.
        lease_seconds: A runtime that has not heartbeat for this long is presumed
            dead: a live runtime of the same app version adopts its PENDING
            workflows (sooner when its process is seen to be gone). Infinite:
            this runtime adopts nothing.
        enable_patching: Allow ``DBOS.patch``/``DBOS.deprecate_patch``. It pins the
            app version to ``"PATCHING_ENABLED"`` (unless ``app_version`` or
            ``$DBOS_APP_VERSION`` names one), so a new release recovers the
            workflows an old one left PENDING, and patches keep those on their
            old path. Without it the version is a hash of the workflow code,
            which changes with every edit.
        clock: What the runtime reads the time from and waits on: durable
            sleeps, timeouts, deadlines, cron, queue delays, heartbeats. None
            is real time; tests pass a ``dbos_async.testing.VirtualClock``
            (``TestEnvironment`` does it for you).
        observers: ``dbos_async.observers.Observer`` instances told of workflow,
            step and queue events: ``dbos_async.contrib.otel.OpenTelemetry``,
            ``dbos_async.contrib.prometheus.PrometheusMetrics``, or your own.
    """

    logger: ClassVar[logging.Logger] = get_logger(APP_LOGGER)
    """A logger whose records made inside a workflow carry ``workflow_id``,
    ``app_version`` and, in a step, ``step_id`` (see ``dbos_async.logs``)."""

    workflow = staticmethod(workflow_module.workflow)
    step = staticmethod(step_module.step)
    transaction = staticmethod(transaction_module.transaction)
    scheduled = staticmethod(scheduler.scheduled)

    def __init__(
        self,
        database_url: str | None = None,
        app_name: str = "app",
        app_version: str | None = None,
        executor_id: str | None = None,
        *,
        schema: str = "dbos_async",
        pool_size: int = 10,
        data_dir: str | os.PathLike[str] = ".dbos_async",
        lease_seconds: float = 30.0,
        enable_patching: bool = False,
        clock: Clock | None = None,
        observers: Sequence[Observer] = (),
    ) -> None:
        self._runtime = Runtime(
            resolve_config(
                database_url,
                app_name,
                app_version,
                executor_id,
                schema,
                pool_size,
                data_dir,
                lease_seconds,
                enable_patching=enable_patching,
            ),
            clock or REAL,
            observers,
        )

    def __repr__(self) -> str:
        rt = self._runtime
        return f"<DBOS executor={rt.executor_id!r} app_version={rt.app_version!r} {rt.state.value}>"

    @property
    def executor_id(self) -> str:
        """This runtime's executor ID."""
        return self._runtime.executor_id

    @property
    def app_version(self) -> str:
        """The app version (resolved at launch when it is the source hash)."""
        return self._runtime.app_version

    @property
    def database_url(self) -> str:
        """The system database URL in use (known once launched)."""
        return self._runtime.database_url

    async def launch(self) -> None:
        """Migrate, start the background tasks and recover PENDING workflows."""
        await self._runtime.launch()

    async def shutdown(self) -> None:
        """Stop everything and close every connection; workflows stay PENDING."""
        await self._runtime.shutdown()

    async def __aenter__(self) -> DBOS:
        await self.launch()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.shutdown()

    @contextlib.asynccontextmanager
    async def lifespan(self, app: object) -> AsyncIterator[None]:
        """An ASGI lifespan: ``FastAPI(lifespan=dbos.lifespan)``."""
        async with self:
            yield

    # -- the facade -------------------------------------------------------------------

    start_workflow = _start_workflow()
    """Start a workflow; the handle returns once it is durably recorded."""

    @_runtime_method
    async def retrieve_workflow(runtime: Runtime | None, workflow_id: str) -> WorkflowHandle[Any]:
        """A handle to a recorded workflow; WorkflowNotFoundError if there is none."""
        return await handle_module.retrieve_workflow(runtime or active_runtime(), workflow_id)

    @_runtime_method
    async def get_workflow_status(
        runtime: Runtime | None, workflow_id: str
    ) -> WorkflowStatus | None:
        """The recorded status of a workflow, or None."""
        return await handle_module.get_workflow_status(runtime or active_runtime(), workflow_id)

    @staticmethod
    def wait_first(items: Sequence[handle_module.Waitable]) -> Coroutine[Any, Any, Any]:
        """The first of some handles, tasks or coroutines to finish; recorded in a workflow.

        Returns the winning handle, or the winning task for a task or coroutine
        (tasks made from coroutines that lost are cancelled).
        """
        return handle_module.wait_first(items)

    @staticmethod
    def sleep(seconds: float) -> Coroutine[Any, Any, None]:
        """Durable sleep: a recovered workflow wakes at the originally recorded time."""
        return step_module.sleep(seconds)

    @staticmethod
    def now() -> Coroutine[Any, Any, datetime]:
        """The current UTC time; inside a workflow it is recorded, so replay sees the same."""
        return values.now()

    @staticmethod
    def random() -> Coroutine[Any, Any, float]:
        """A float in [0, 1); inside a workflow it is recorded, so replay sees the same."""
        return values.random()

    @staticmethod
    def uuid4() -> Coroutine[Any, Any, uuid.UUID]:
        """A random UUID; inside a workflow it is recorded, so replay sees the same."""
        return values.uuid4()

    @staticmethod
    def patch(name: str) -> Coroutine[Any, Any, bool]:
        """Whether this execution takes the new path of patch ``name``; recorded in a workflow.

        True on executions that are new (or had not reached this point), False
        on those recorded before the patch existed. Needs
        ``DBOS(..., enable_patching=True)``; only inside workflow code.
        """
        return patching.patch(name)

    @staticmethod
    def deprecate_patch(name: str) -> Coroutine[Any, Any, bool]:
        """Replaces ``DBOS.patch(name)`` once no execution predating the patch remains.

        Steps over the patch's marker where one is recorded and records none
        itself, so it can later be deleted. Needs ``DBOS(..., enable_patching=True)``.
        """
        return patching.deprecate_patch(name)

    @_runtime_method
    async def list_application_versions(runtime: Runtime | None) -> list[AppVersion]:
        """Every app version registered (or named by waiting work), newest first.

        Each with whether it is the latest, its live runtimes, and its PENDING
        and ENQUEUED workflows: ``AppVersion.stranded`` counts those no live
        runtime of the version will run.
        """
        rt = runtime or active_runtime()
        return await versions.list_application_versions(rt.pool, rt.clock)

    @_runtime_method
    async def set_latest_application_version(runtime: Runtime | None, version: str) -> None:
        """Make ``version`` the latest: enqueues that name no version go to it.

        Raises:
            ValueError: no runtime of ``version`` ever ran against this database.
        """
        rt = runtime or active_runtime()
        await versions.set_latest_application_version(rt.pool, version, rt.clock)

    @_runtime_method
    async def cancel_workflow(runtime: Runtime | None, workflow_id: str) -> None:
        """Cancel a PENDING or ENQUEUED workflow; its running step is interrupted."""
        rt = runtime or active_runtime()
        await management.cancel_workflow(rt.pool, workflow_id, rt)

    @_runtime_method
    async def resume_workflow(runtime: Runtime | None, workflow_id: str) -> WorkflowHandle[Any]:
        """Continue a cancelled or failed workflow from its last completed step, here."""
        rt = runtime or active_runtime()
        await management.resume_workflow(rt.pool, workflow_id, rt)
        return WorkflowHandle(rt, workflow_id)

    # -- messages, events, streams ----------------------------------------------------

    @_runtime_method
    def send(
        runtime: Runtime | None, destination_id: str, message: Any, topic: str | None = None
    ) -> Coroutine[Any, Any, None]:
        """Send a message to a workflow; exactly once from a workflow.

        Outside a workflow, ``SetWorkflowID`` around the call is its idempotency key.
        """
        return messaging.send(runtime, destination_id, message, topic)

    @staticmethod
    def recv(topic: str | None = None, timeout_seconds: float = 60) -> Coroutine[Any, Any, Any]:
        """The next message for this workflow on ``topic``, or None on timeout (durable)."""
        return messaging.recv(topic, timeout_seconds)

    @staticmethod
    def set_event(key: str, value: Any) -> Coroutine[Any, Any, None]:
        """Set an event of this workflow; the latest value wins."""
        return messaging.set_event(key, value)

    @_runtime_method
    def get_event(
        runtime: Runtime | None, workflow_id: str, key: str, timeout_seconds: float = 60
    ) -> Coroutine[Any, Any, Any]:
        """A workflow's event value, waiting up to the timeout; None if it is not set."""
        return messaging.get_event(runtime, workflow_id, key, timeout_seconds)

    @_runtime_method
    def get_all_events(
        runtime: Runtime | None, workflow_id: str
    ) -> Coroutine[Any, Any, dict[str, Any]]:
        """Every event of a workflow with its latest value."""
        return messaging.get_all_events(runtime, workflow_id)

    @staticmethod
    def write_stream(key: str, value: Any) -> Coroutine[Any, Any, None]:
        """Append a value to this workflow's stream ``key``."""
        return streams.write_stream(key, value)

    @staticmethod
    def close_stream(key: str) -> Coroutine[Any, Any, None]:
        """Close this workflow's stream ``key``."""
        return streams.close_stream(key)

    @_runtime_method
    def read_stream(runtime: Runtime | None, workflow_id: str, key: str) -> AsyncIterator[Any]:
        """Iterate a workflow's stream; ends when it is closed or the workflow finishes."""
        return streams.read_stream(runtime or active_runtime(), workflow_id, key)

    @_runtime_method
    async def restart_workflow(runtime: Runtime | None, workflow_id: str) -> WorkflowHandle[Any]:
        """Run a workflow again from scratch with the same inputs, under a new ID, here."""
        rt = runtime or active_runtime()
        return WorkflowHandle(rt, await management.restart_workflow(rt.pool, workflow_id, rt))

    @_runtime_method
    async def fork_workflow(
        runtime: Runtime | None,
        workflow_id: str,
        start_step: int,
        application_version: str | None = None,
    ) -> WorkflowHandle[Any]:
        """Copy a workflow under a new ID, reusing its steps before ``start_step``."""
        rt = runtime or active_runtime()
        new_id = await management.fork_workflow(
            rt.pool, workflow_id, start_step, application_version, rt
        )
        return WorkflowHandle(rt, new_id)

    @_runtime_method
    async def delete_workflow(
        runtime: Runtime | None, workflow_id: str, delete_children: bool = False
    ) -> None:
        """Delete a workflow (with its children, optionally) and everything it recorded."""
        pool = (runtime or active_runtime()).pool
        await management.delete_workflow(pool, workflow_id, delete_children)

    @_runtime_method
    async def list_workflows(
        runtime: Runtime | None, **filters: Unpack[management.ListFilters]
    ) -> list[WorkflowStatus]:
        """Recorded workflows matching every filter given (see ``management.list_workflows``)."""
        return await management.list_workflows((runtime or active_runtime()).pool, **filters)

    @_runtime_method
    async def list_queued_workflows(
        runtime: Runtime | None, **filters: Unpack[management.QueuedFilters]
    ) -> list[WorkflowStatus]:
        """Workflows on a queue, ENQUEUED or PENDING unless ``status`` says otherwise."""
        pool = (runtime or active_runtime()).pool
        return await management.list_queued_workflows(pool, **filters)

    @_runtime_method
    async def list_workflow_steps(runtime: Runtime | None, workflow_id: str) -> list[StepInfo]:
        """The recorded steps of a workflow, in step order."""
        return await management.list_workflow_steps((runtime or active_runtime()).pool, workflow_id)
