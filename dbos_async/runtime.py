"""The runtime behind ``DBOS``: its lifecycle, connections, writers and running workflows.

All background work runs in one dedicated task that owns an anyio task group,
so ``launch()`` and ``shutdown()`` may be called from different tasks (as
ASGI servers and test fixtures do). Shutdown order: cancel the workflow tasks,
queue workers and schedules (rows stay PENDING or ENQUEUED), let the writers
drain, then close every connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import enum
import logging
import os
import secrets
import socket
import threading
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
from anyio.abc import TaskGroup

from dbos_async import branches, fleet, registry, versions, workflow
from dbos_async.clock import REAL, Clock
from dbos_async.context import Running
from dbos_async.errors import DBOSError
from dbos_async.logs import get_logger
from dbos_async.notifications import Listener
from dbos_async.observers import Observer, notify
from dbos_async.patching import PATCHING_ENABLED
from dbos_async.queue_worker import QueueWorker
from dbos_async.reconcile import Reconciler
from dbos_async.recovery import HOST_KEY, recover_pending
from dbos_async.scheduler import Scheduler
from dbos_async.streams import Announcer
from dbos_async.systemdb import executors as executors_table
from dbos_async.systemdb import queues as queues_table
from dbos_async.systemdb import steps as steps_table
from dbos_async.systemdb import workflows as wf_table
from dbos_async.systemdb.group_commit import GroupCommit
from dbos_async.systemdb.migrate import migrate
from dbos_async.systemdb.pool import (
    COMMAND_TIMEOUT_SECONDS,
    Pool,
    PooledConnection,
    SystemConnection,
    acquire,
    create_pool,
    in_use,
)
from dbos_async.systemdb.shields import Shields
from dbos_async.validation import MAX_EXECUTOR_ID_BYTES, check_identifier, check_schema_name

logger = get_logger(__name__)

_launched: list[Runtime] = []


def active_runtime() -> Runtime:
    """The runtime of the current workflow, else the one launched most recently.

    Raises:
        DBOSError: no runtime is running in this process.
    """
    from dbos_async.context import current_workflow

    ctx = current_workflow.get()
    if ctx is not None:
        return ctx.runtime
    if not _launched:
        raise DBOSError(
            "No DBOS runtime is running: use `async with DBOS(...)` or `await launch()`"
        )
    return _launched[-1]


def _show_logs() -> None:
    """Make the runtime's INFO and above visible when nothing else would show them.

    Under a server that configures only its own loggers (uvicorn's default
    setup), no handler reaches ``dbos_async`` and Python drops INFO. An app
    that configured logging (any handler on the way to the root) is left as
    it is.
    """
    package = logging.getLogger("dbos_async")
    if package.hasHandlers():
        return
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    package.addHandler(handler)
    if package.level == logging.NOTSET:
        package.setLevel(logging.INFO)


class State(enum.Enum):
    """Lifecycle of a runtime; each runtime launches at most once."""

    NEW = "new"
    LAUNCHING = "launching"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"


@dataclass(frozen=True, slots=True)
class Config:
    """Resolved settings of one runtime."""

    database_url: str | None
    app_name: str
    app_version: str | None
    executor_id: str
    schema: str
    pool_size: int
    data_dir: Path
    lease_seconds: float = 30.0
    enable_patching: bool = False  # DBOS.patch allowed; app_version pinned


def resolve_config(
    database_url: str | None,
    app_name: str,
    app_version: str | None,
    executor_id: str | None,
    schema: str,
    pool_size: int,
    data_dir: str | os.PathLike[str],
    lease_seconds: float = 30.0,
    enable_patching: bool = False,
) -> Config:
    """Apply the documented resolution order: argument, then environment, then default.

    With ``enable_patching`` the default app version is the constant
    ``"PATCHING_ENABLED"``, not the source hash: new code must recover old work.
    """
    if pool_size < 2:
        raise ValueError("pool_size must be at least 2")
    if not lease_seconds > 0:
        raise ValueError(f"lease_seconds must be positive, got {lease_seconds!r}")
    version = app_version or os.environ.get("DBOS_APP_VERSION") or None
    if version is None and enable_patching:
        version = PATCHING_ENABLED
    return Config(
        database_url=database_url or os.environ.get("DBOS_DATABASE_URL") or None,
        app_name=check_identifier(app_name, "app_name"),
        app_version=check_identifier(version, "app_version") if version else None,
        executor_id=check_identifier(
            executor_id or os.environ.get("DBOS_EXECUTOR_ID") or "local",
            "executor_id",
            MAX_EXECUTOR_ID_BYTES,
        ),
        schema=check_schema_name(schema),
        pool_size=pool_size,
        data_dir=Path(data_dir),
        lease_seconds=float(lease_seconds),
        enable_patching=bool(enable_patching),
    )


FORGET_SECONDS = 2.0
"""Longest shutdown spends deleting the instance's row."""


class BodyThreads:
    """Sync step bodies running in worker threads; one whose workflow was cancelled runs on."""

    def __init__(self) -> None:
        self._lock = threading.Lock()  # counted from the worker threads
        self.running = 0
        self._none = threading.Event()  # set while no body runs
        self._none.set()

    def run(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Call ``fn`` in this (worker) thread, counted while it runs."""
        with self._lock:
            self.running += 1
            self._none.clear()
        try:
            return fn(*args, **kwargs)
        finally:
            with self._lock:
                self.running -= 1
                if not self.running:
                    self._none.set()

    def wait_none(self, timeout: float) -> bool:
        """Block (in a worker thread) until no body runs; False if ``timeout`` passed first."""
        return self._none.wait(timeout)


class Runtime:
    """Everything one ``DBOS`` instance runs; see the module docstring."""

    def __init__(
        self, config: Config, clock: Clock = REAL, observers: Sequence[Observer] = ()
    ) -> None:
        self.config = config
        # Told of workflow, step and queue events (observers.py); empty: one check each.
        self.observers: tuple[Observer, ...] = tuple(observers)
        # Every time the runtime reads or waits on (clock.py).
        self.clock = clock
        # Async step bodies running now (sync ones are body_threads'): what a
        # virtual clock waits for before it moves (busy()).
        self.bodies_running = 0
        self.state = State.NEW
        self.app_name = config.app_name
        self.executor_id = config.executor_id
        # This runtime, among any that share its executor ID (in this process
        # or others): what it claims carries this (claimed_by), and no other
        # instance takes it while this one lives (recovery.py).
        self.instance_id = uuid.uuid4().hex
        self._instance: executors_table.Instance | None = None
        self.reconciler = Reconciler(self)
        self.app_version = config.app_version or ""
        # The latest app version (versions.py), as of the last heartbeat.
        self.latest_version: str | None = None
        # PENDING/ENQUEUED workflows of versions no live runtime runs, as of the last count.
        self.stranded_workflows = 0
        # Waiting workflows of this version whose function it does not register.
        self.unrunnable_workflows = 0
        self.database_url = ""
        # The workflows this runtime has claimed (started, recovered, dequeued).
        self.local: dict[str, Running] = {}
        self._task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()
        self._pool: Pool | None = None
        self._app_pool: Pool | None = None
        self._app_pool_lock = asyncio.Lock()
        self._group: TaskGroup | None = None
        self._writers: list[GroupCommit[Any, Any]] = []
        self.thread_limiter: anyio.CapacityLimiter | None = None
        self.body_threads = BodyThreads()
        self.embedded: Any = None
        self._listener: Listener | None = None
        self.stream_announcer = Announcer()
        # Seconds before replaying a workflow that lost the database: the first
        # wait, and the longest (see workflow._replay_later).
        self.replay_backoff = (1.0, 30.0)
        # Seconds shutdown gives writes in flight and closing connections: a
        # server that stopped answering cannot hold it longer.
        self.shutdown_grace = 10.0
        self.shields = Shields()  # every shielded write, so shutdown can bound them
        # Longest a system statement may take before its connection counts as lost.
        self.command_timeout = COMMAND_TIMEOUT_SECONDS
        self.crashed = False  # crash(): stopped as a killed process would, recording nothing
        self._registered = False  # its instance row exists (the launch got that far)
        # Step bodies a test replaced, by step name (TestEnvironment.override_step).
        self.step_overrides: dict[str, registry.Registered] = {}

    # -- resources ------------------------------------------------------------------

    @property
    def pool(self) -> Pool:
        """The system database pool."""
        self._check_running()
        assert self._pool is not None
        return self._pool

    @property
    def instance(self) -> executors_table.Instance:
        """What this runtime instance records about itself (set at launch)."""
        assert self._instance is not None, "the runtime has not registered yet"
        return self._instance

    @property
    def listener(self) -> Listener:
        """The notification listener: ``watch(kind, key)`` for wake-ups."""
        self._check_running()
        assert self._listener is not None
        return self._listener

    @property
    def workflow_group(self) -> TaskGroup:
        """The task group that owns every workflow task."""
        self._check_running()
        assert self._group is not None
        return self._group

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[PooledConnection]:
        """A system-database connection; lost-connection errors become DatabaseUnavailableError."""
        async with acquire(self.pool) as conn:
            yield conn

    def _check_running(self) -> None:
        if self.crashed:
            raise DBOSError(
                "This DBOS runtime crashed (TestEnvironment.crash): use the restarted one,"
                " e.g. env.dbos.retrieve_workflow(workflow_id) for a new handle"
            )
        if self.state is not State.RUNNING:
            raise DBOSError(f"The DBOS runtime is {self.state.value}, not running")

    def cancel_local(self, workflow_id: str) -> None:
        """Interrupt a workflow running here whose row was just marked CANCELLED."""
        workflow.cancel_local(self, workflow_id)

    def busy(self) -> str | None:
        """What this runtime is doing right now, or None when it only waits.

        A virtual clock moves only once every runtime on it answers None:
        no step body runs, no write is queued or in flight, and no system or
        application connection is in use (the group-commit writers keep
        theirs between batches).
        """
        if self.bodies_running or self.body_threads.running:
            return "a step body runs"
        if self.stream_announcer.pending:
            return "a stream announcement is due"
        if self._app_pool_lock.locked():
            return "the transactions' pool is being opened"
        for writer in self._writers:
            if writer.busy:
                return f"the {writer.name} writer has rows to write"
        held = sum(writer.connections_held for writer in self._writers)
        for pool in (self._pool, self._app_pool):
            if pool is not None and in_use(pool) > held:
                return "a database connection is in use"
            held = 0
        return None

    async def sync(self) -> None:
        """Return once every notification committed before the call has been handled."""
        if self._listener is not None and self.state is State.RUNNING:
            await self._listener.sync()

    @property
    def stopping(self) -> bool:
        """Whether the runtime is shutting down (or its task is being cancelled)."""
        if self.state is not State.RUNNING:
            return True
        if self._group is not None and self._group.cancel_scope.cancel_called:
            return True
        task = self._task
        # The loop itself is ending (asyncio.run cancels every task at once).
        return task is not None and (task.done() or task.cancelling() > 0)

    async def app_pool(self) -> Pool:
        """The pool for ``@DBOS.transaction`` bodies, opened on first use.

        Its connections keep the server's default search path (our schema is
        appended), and asyncpg resets them on release, so user code can change
        session state freely.
        """
        async with self._app_pool_lock:
            if self._app_pool is None:
                self._check_running()
                self._app_pool = await create_pool(
                    self.database_url,
                    schema=self.config.schema,
                    max_size=max(2, self.config.pool_size // 2),
                    search_path=f'"$user", public, {self.config.schema}',
                    command_timeout=None,  # the app's transactions take what they take
                )
            return self._app_pool

    # -- lifecycle ------------------------------------------------------------------

    async def launch(self) -> None:
        """Start everything; returns once recovery has started and the runtime is live."""
        if self.state is not State.NEW:
            raise DBOSError(f"This DBOS runtime was already launched (it is {self.state.value})")
        self.state = State.LAUNCHING
        loop = asyncio.get_running_loop()
        # Tasks created by workflow code get their branch from the loop's task factory.
        branches.install(loop)
        started: asyncio.Future[None] = loop.create_future()
        # A fresh context: nothing the caller set (SetWorkflowID...) leaks into the runtime.
        self._task = asyncio.create_task(
            self._main(started),
            name=f"dbos_async runtime {self.executor_id}",
            context=contextvars.Context(),
        )
        try:
            await asyncio.shield(started)
        except BaseException:
            self._stop.set()
            await asyncio.gather(self._task, return_exceptions=True)
            self.state = State.STOPPED
            raise
        _launched.append(self)

    async def shutdown(self) -> None:
        """Stop everything and close every connection; workflows stay PENDING and recover."""
        if self.state in (State.NEW, State.STOPPED):
            self.state = State.STOPPED
            return
        if self in _launched:
            _launched.remove(self)
        self._stop.set()
        if self._task is not None:
            with contextlib.suppress(Exception):  # logged when it happened
                await asyncio.shield(self._task)
        loop = asyncio.get_running_loop()
        if not any(r._task is not None and r._task.get_loop() is loop for r in _launched):
            branches.uninstall(loop)  # the last runtime on this loop: leave it as we found it

    async def crash(self) -> None:
        """Stop at once as a killed process would: nothing more reaches the database.

        For tests (``TestEnvironment.crash``). Every connection is cut before
        anything else runs, so no write in flight or queued commits, and no
        shutdown bookkeeping is written: the instance's row stays, its
        workflows PENDING, as after a SIGKILL.
        """
        if self.state is not State.RUNNING or self._task is None:
            raise DBOSError(f"The DBOS runtime is {self.state.value}, not running")
        self.crashed = True
        if self in _launched:
            _launched.remove(self)
        for pool in (self._pool, self._app_pool):
            if pool is not None:
                pool.terminate()
        if self._listener is not None:
            self._listener.terminate()
        self.shields.bound(0)  # shielded writes end now, unfinished
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        loop = asyncio.get_running_loop()
        if not any(r._task is not None and r._task.get_loop() is loop for r in _launched):
            branches.uninstall(loop)

    async def _main(self, started: asyncio.Future[None]) -> None:
        try:
            self.database_url = await self._database_url()
            if not self.config.app_version:
                # Reads source files: keep that off the event loop.
                self.app_version = await anyio.to_thread.run_sync(registry.compute_app_version)
            self._pool = await create_pool(
                self.database_url,
                schema=self.config.schema,
                max_size=self.config.pool_size,
                command_timeout=self.command_timeout,
            )
            self._instance = executors_table.Instance(
                instance_id=self.instance_id,
                executor_id=self.executor_id,
                app_name=self.app_name,
                app_version=self.app_version,
                hostname=socket.gethostname(),
                pid=os.getpid(),
                lock_key=secrets.randbits(63),  # a bigint advisory lock key; see 0008
                host_key=HOST_KEY,
                heartbeat_ms=int(fleet.heartbeat_seconds(self.config.lease_seconds) * 1000),
            )
            async with acquire(self._pool) as conn:
                await migrate(conn, self.config.schema)
                # Registered before anything is claimed, and before the listener
                # takes the lock that says the instance lives.
                self.latest_version = await executors_table.upsert_heartbeat(
                    conn, self._instance, self.clock.sql_now_ms()
                )
            self._registered = True
            self.thread_limiter = anyio.CapacityLimiter(40)
            writers = 2 if self.config.pool_size >= 8 else 1  # per kind; each holds a connection
            self.workflow_writer = GroupCommit(
                "insert_workflows",
                self._pool,
                wf_table.insert_workflows,
                writers=writers,
                max_batch=500,
                shields=self.shields,
            )
            self.step_writer = GroupCommit(
                "insert_steps",
                self._pool,
                steps_table.insert_steps,
                writers=writers,
                max_batch=1000,
                shields=self.shields,
            )
            self.completion_writer = GroupCommit(
                "complete_workflows",
                self._pool,
                wf_table.complete_workflows,
                writers=writers,
                max_batch=500,
                shields=self.shields,
            )
            self.enqueue_writer = GroupCommit(
                "enqueue_workflows",
                self._pool,
                queues_table.enqueue_workflows,
                writers=1,  # enqueues are bursty; keep the pool for claims and reads
                max_batch=500,
                shields=self.shields,
            )
            self._writers = [
                self.workflow_writer,
                self.step_writer,
                self.completion_writer,
                self.enqueue_writer,
            ]
            self._listener = Listener(
                self.database_url,
                channel=self.config.schema,
                name=f"dbos_async listener {self.executor_id}"[:63],
                on_connect=self._hold_instance_lock,
            )
            # Hints only: the rows are re-read before anything is stopped.
            checks = workflow.RowChecks(self)
            self._listener.on("c", lambda key: checks.request([key]))
            self._listener.on("a", lambda key: checks.request([key.partition(":")[2]]))
            self._listener.on_reconnect(lambda: checks.request(None))
            async with anyio.create_task_group() as services:
                # LISTEN is live before anything can wait on it.
                await services.start(self._listener.run)
                for writer in self._writers:
                    await services.start(writer.run)
                try:
                    async with anyio.create_task_group() as group:
                        self._group = group
                        self.state = State.RUNNING
                        recovered = await recover_pending(self)
                        await group.start(checks.run)
                        await group.start(fleet.heartbeat_and_adopt, self)
                        await group.start(self.reconciler.run)
                        # Live (watching q:<queue>, sleeping until ticks) before launch returns.
                        await group.start(QueueWorker(self).run)
                        await group.start(Scheduler(self).run)
                        _show_logs()
                        logger.info(
                            "DBOS runtime launched (executor %s, app version %s,"
                            " %d workflows recovered%s)",
                            self.executor_id,
                            self.app_version,
                            recovered,
                            " so far" if recovered else "",
                            extra={"action": "launch"},
                        )
                        await versions.check_stranded(self)
                        self.clock.attach(self.busy, self.sync)
                        if self.observers:
                            notify(self.observers, "runtime_launched", self)
                        started.set_result(None)
                        await self._stop.wait()
                        self.state = State.STOPPING
                        self._bound_writes()
                        group.cancel_scope.cancel()
                finally:
                    self.state = State.STOPPING
                    self._bound_writes()
                    for writer in self._writers:
                        writer.close()
                    self._listener.stop()
        except BaseException as exc:
            if not started.done():
                started.set_exception(exc)
                return
            if isinstance(exc, Exception):
                # Said now, not at shutdown: nothing else tells the app its
                # workflows, queues and schedules have stopped.
                logger.exception("the DBOS runtime failed and stopped", extra={"action": "failed"})
            raise
        finally:
            if self.observers and self._registered:  # every way it stops: crash included
                notify(self.observers, "runtime_stopping", self)
            self.clock.detach(self.busy)
            self.state = State.STOPPING
            if not self.crashed:
                await self._forget_instance()
            await self._close_pools()
            self.local.clear()
            self.state = State.STOPPED
            logger.info("DBOS runtime stopped", extra={"action": "shutdown"})

    async def _hold_instance_lock(self, conn: SystemConnection) -> None:
        await executors_table.lock_instance(conn, self.instance, self.clock.sql_now_ms())

    async def _forget_instance(self) -> None:
        """Delete this instance's row: its PENDING workflows are orphans at once.

        Its workflows have stopped, so a successor (or a sibling's next round)
        takes them over without waiting for the lock's settle period. If the
        database cannot be reached, the lock (gone with the connection) says
        the same a little later.
        """
        if self._pool is None or self._instance is None or not self._registered:
            return  # nothing to delete (the launch failed before registering)
        if self.body_threads.running:
            # A step body still runs (Python cannot stop a thread): its workflow
            # must not start elsewhere at once. Left registered, the instance's
            # workflows are taken over only after the lock's settle period.
            logger.warning(
                "%d step bodies still run in threads: this runtime's workflows are"
                " taken over only after the settle period",
                self.body_threads.running,
                extra={"action": "shutdown"},
            )
            return
        # Short: a server that stopped answering must not hold shutdown (the
        # freed lock tells the same a little later).
        with anyio.move_on_after(min(self.shutdown_grace, FORGET_SECONDS), shield=True):
            try:
                async with acquire(self._pool) as conn:
                    await executors_table.forget_instance(conn, self._instance)
            except Exception as exc:
                logger.warning(
                    "could not deregister this runtime: %r", exc, extra={"action": "shutdown"}
                )

    def _bound_writes(self) -> None:
        self.shields.bound(self.shutdown_grace)

    async def _close_pools(self) -> None:
        with anyio.CancelScope(shield=True):
            for pool in (self._app_pool, self._pool):
                if pool is not None:
                    try:
                        await asyncio.wait_for(pool.close(), timeout=self.shutdown_grace)
                    except Exception:
                        pool.terminate()

    async def _database_url(self) -> str:
        if self.config.database_url:
            return self.config.database_url
        from dbos_async.embedded import start_embedded_postgres

        url, self.embedded = await start_embedded_postgres(self.config.data_dir)
        return str(url)
