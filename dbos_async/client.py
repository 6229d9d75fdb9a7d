"""``DBOSClient``: manage and wait for workflows from a process that runs none.

A client needs only the database URL, not the application's code: it reads
and changes the system tables through the same ``management`` functions as
``DBOS``, and its handles wait through its own notification listener.
Without the application's types, results and inputs decode as plain JSON.
Workflows it resumes, restarts or forks are ENQUEUED on the internal queue,
which every runtime's queue worker serves.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
from collections.abc import AsyncIterator, Mapping
from types import MappingProxyType, TracebackType
from typing import Any, Self, Unpack

import anyio

from dbos_async import context, management, messaging, streams, versions
from dbos_async.clock import REAL, Clock
from dbos_async.context import Running
from dbos_async.errors import DBOSError
from dbos_async.handle import WorkflowHandle, get_workflow_status, retrieve_workflow
from dbos_async.logs import get_logger
from dbos_async.models import AppVersion, StepInfo, WorkflowStatus
from dbos_async.notifications import Listener
from dbos_async.queue import enqueue_by_name
from dbos_async.systemdb.migrate import missing_migrations
from dbos_async.systemdb.pool import Pool, PooledConnection, acquire, create_pool
from dbos_async.systemdb.queries import q
from dbos_async.validation import check_schema_name

logger = get_logger(__name__)

_NOTHING_RUNS_HERE: Mapping[str, Running] = MappingProxyType({})


class _State(enum.Enum):
    NEW = "new"
    OPEN = "open"
    CLOSED = "closed"


class DBOSClient:
    """A connection to a dbos_async system database, for code outside the application.

    Use it as ``async with DBOSClient(url) as client:``; entering opens a small
    pool and a LISTEN connection, leaving closes them.

    Args:
        database_url: The system database's Postgres URL.
        schema: The schema holding the system tables (as given to ``DBOS``).
    """

    def __init__(self, database_url: str, *, schema: str = "dbos_async") -> None:
        if not isinstance(database_url, str) or not database_url:
            raise ValueError("DBOSClient needs a database URL")
        self._url = database_url
        self._schema = check_schema_name(schema)
        self._state = _State.NEW
        self._pool: Pool | None = None
        self._listener: Listener | None = None
        self._task: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"<DBOSClient schema={self._schema!r} {self._state.value}>"

    async def __aenter__(self) -> Self:
        """Open the pool and start the listener.

        The listener runs in a task of its own (like the runtime's services),
        so the client may be entered and left in different tasks, as test
        fixtures and ASGI lifespans do.

        Raises:
            DatabaseUnavailableError: the database cannot be reached.
            DBOSError: the client was entered before, or the schema is not migrated.
        """
        if self._state is not _State.NEW:
            raise DBOSError(f"This DBOSClient was already used (it is {self._state.value})")
        self._state = _State.CLOSED  # whatever happens next, it is not NEW any more
        pool = await create_pool(self._url, schema=self._schema, max_size=4)
        try:
            async with acquire(pool) as conn:
                migrated = await conn.fetchval(
                    q(conn, "table_exists"), self._schema, "workflow_status"
                )
                missing = await missing_migrations(conn, self._schema) if migrated else []
            if not migrated:
                raise DBOSError(
                    f"No dbos_async tables in schema {self._schema!r} of this database: "
                    "run `dbos-async migrate` (or launch the application) first"
                )
            if missing:
                # Its statements name what those add: refuse now, not on each call.
                raise DBOSError(
                    f"Schema {self._schema!r} lacks migrations {missing} of this release:"
                    " run `dbos-async migrate` (or launch an up-to-date application) first"
                )
            listener = Listener(self._url, channel=self._schema)
            started: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._task = asyncio.create_task(
                self._listen(listener, started), name="dbos_async client listener"
            )
            await asyncio.shield(started)
        except BaseException:
            await _close_pool(pool)
            raise
        self._pool, self._listener = pool, listener
        self._state = _State.OPEN
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stop the listener and close every connection."""
        if self._listener is None or self._pool is None:
            return
        self._state = _State.CLOSED
        self._listener.stop()
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)
        await _close_pool(self._pool)
        self._listener = self._pool = self._task = None

    @staticmethod
    async def _listen(listener: Listener, started: asyncio.Future[None]) -> None:
        try:
            async with anyio.create_task_group() as tg:
                await tg.start(listener.run)
                started.set_result(None)
        except BaseException as exc:
            if not started.done():
                started.set_exception(exc)
                return
            logger.exception("the DBOSClient listener stopped with an error")

    # -- what handles read through (workflow.HandleSource) ----------------------------

    @property
    def local(self) -> Mapping[str, Running]:
        """Always empty: a client runs no workflow."""
        return _NOTHING_RUNS_HERE

    @property
    def listener(self) -> Listener:
        """The client's notification listener."""
        self._check_open()
        assert self._listener is not None
        return self._listener

    @property
    def pool(self) -> Pool:
        """The client's connection pool to the system database."""
        self._check_open()
        assert self._pool is not None
        return self._pool

    @property
    def clock(self) -> Clock:
        """Real time: a client's waits are its caller's."""
        return REAL

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[PooledConnection]:
        """A pooled connection; lost connections become DatabaseUnavailableError."""
        async with acquire(self.pool) as conn:
            yield conn

    def _check_open(self) -> None:
        if self._state is not _State.OPEN:
            raise DBOSError(f"This DBOSClient is {self._state.value}: use it inside `async with`")

    # -- workflows ----------------------------------------------------------------------

    async def retrieve_workflow(self, workflow_id: str) -> WorkflowHandle[Any]:
        """A handle to a recorded workflow; ``get_result()`` waits for it via NOTIFY.

        Raises:
            WorkflowNotFoundError: no workflow has this ID.
        """
        return await retrieve_workflow(self, workflow_id)

    async def get_workflow_status(self, workflow_id: str) -> WorkflowStatus | None:
        """The recorded status of a workflow, or None."""
        return await get_workflow_status(self, workflow_id)

    async def list_workflows(
        self, **filters: Unpack[management.ListFilters]
    ) -> list[WorkflowStatus]:
        """Recorded workflows matching every filter given (see ``DBOS.list_workflows``)."""
        return await management.list_workflows(self.pool, **filters)

    async def list_queued_workflows(
        self, **filters: Unpack[management.QueuedFilters]
    ) -> list[WorkflowStatus]:
        """Workflows on a queue, ENQUEUED or PENDING unless ``status`` says otherwise."""
        return await management.list_queued_workflows(self.pool, **filters)

    async def list_workflow_steps(self, workflow_id: str) -> list[StepInfo]:
        """The recorded steps of a workflow, in step order."""
        return await management.list_workflow_steps(self.pool, workflow_id)

    async def cancel_workflow(self, workflow_id: str) -> None:
        """Cancel a PENDING or ENQUEUED workflow; the runtime running it interrupts it."""
        await management.cancel_workflow(self.pool, workflow_id)

    async def list_application_versions(self) -> list[AppVersion]:
        """Every app version registered (or named by waiting work), newest first."""
        return await versions.list_application_versions(self.pool)

    async def set_latest_application_version(self, version: str) -> None:
        """Make ``version`` the latest: enqueues that name no version go to it."""
        await versions.set_latest_application_version(self.pool, version)

    async def resume_workflow(self, workflow_id: str) -> WorkflowHandle[Any]:
        """Enqueue a cancelled or failed workflow to continue from its last completed step."""
        await management.resume_workflow(self.pool, workflow_id)
        return WorkflowHandle(self, workflow_id)

    async def restart_workflow(self, workflow_id: str) -> WorkflowHandle[Any]:
        """Enqueue a fresh run of a workflow with the same inputs, under a new ID."""
        return WorkflowHandle(self, await management.restart_workflow(self.pool, workflow_id))

    async def fork_workflow(
        self, workflow_id: str, start_step: int, application_version: str | None = None
    ) -> WorkflowHandle[Any]:
        """Enqueue a copy of a workflow that reuses its steps before ``start_step``."""
        new_id = await management.fork_workflow(
            self.pool, workflow_id, start_step, application_version
        )
        return WorkflowHandle(self, new_id)

    async def delete_workflow(self, workflow_id: str, delete_children: bool = False) -> None:
        """Delete a workflow (with its children, optionally) and everything it recorded."""
        await management.delete_workflow(self.pool, workflow_id, delete_children)

    # -- queues, messages, events, streams ------------------------------------------------

    async def enqueue(
        self,
        *args: Any,
        queue_name: str,
        workflow_name: str,
        workflow_id: str | None = None,
        deduplication_id: str | None = None,
        priority: int | None = None,
    ) -> WorkflowHandle[Any]:
        """Enqueue the workflow registered as ``workflow_name`` on ``queue_name``.

        The handle's ``get_result`` waits for the workflow's NOTIFY. ``workflow_id``
        is an idempotency key; ``SetWorkflowID`` around the call works too.

        Raises:
            QueueDeduplicatedError: the deduplication ID is live on this queue.
            WorkflowConflictError: ``workflow_id`` belongs to another function.
            SerializationError: the arguments cannot be encoded (nothing was written).
        """
        self._check_open()
        # SetWorkflowID's on_conflict applies to the key it set.
        strict = workflow_id is None and context.strict_inputs()
        workflow_id = workflow_id or context.take_next_workflow_id()
        workflow_id = await enqueue_by_name(
            self.pool,
            queue_name=queue_name,
            workflow_name=workflow_name,
            args=args,
            workflow_id=workflow_id,
            deduplication_id=deduplication_id,
            priority=priority,
            on_conflict="raise" if strict and workflow_id is not None else "return",
        )
        return WorkflowHandle(self, workflow_id)

    async def send(self, destination_id: str, message: Any, topic: str | None = None) -> None:
        """Send a message to a workflow; ``SetWorkflowID`` around it is an idempotency key."""
        self._check_open()
        await messaging.send(self, destination_id, message, topic)

    async def get_event(self, workflow_id: str, key: str, timeout_seconds: float = 60) -> Any:
        """A workflow's event value, waiting up to the timeout; None if it is not set."""
        self._check_open()
        return await messaging.get_event(self, workflow_id, key, timeout_seconds)

    async def get_all_events(self, workflow_id: str) -> dict[str, Any]:
        """Every event of a workflow with its latest value."""
        self._check_open()
        return await messaging.get_all_events(self, workflow_id)

    def read_stream(self, workflow_id: str, key: str) -> AsyncIterator[Any]:
        """Iterate a workflow's stream; ends when it is closed or the workflow finishes."""
        self._check_open()
        return streams.read_stream(self, workflow_id, key)


async def _close_pool(pool: Pool) -> None:
    with anyio.CancelScope(shield=True):
        try:
            await asyncio.wait_for(pool.close(), timeout=10)
        except Exception:
            pool.terminate()
