"""Group commit: writes submitted while a statement is in flight share the next one.

A lone writer pays one round trip and writes its row itself, in its own task
(the "leader"). Rows that arrive while every connection is busy queue up, and
the next free connection writes them all as one multi-row statement whose
commit every submitter awaits. That is how thousands of concurrent workflows
checkpoint over a handful of connections.

Sharing a statement must not mean sharing a failure: when a batch fails for a
reason other than a lost connection (one row the server or the driver refuses),
each of its rows is written again alone, so each submitter gets its own row's
outcome. A batch that succeeds costs nothing extra.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Generic, TypeVar

import anyio
from anyio.abc import TaskGroup, TaskStatus

from dbos_async.errors import DatabaseUnavailableError
from dbos_async.systemdb.pool import (
    Connection,
    Pool,
    PooledConnection,
    acquire_connection,
    is_connection_error,
    terminate,
)
from dbos_async.systemdb.shields import Shields

logger = logging.getLogger(__name__)

Row = TypeVar("Row")
Result = TypeVar("Result")

# One result per row; an exception instance in place of a result is raised to that row's caller.
Flush = Callable[[Connection, Sequence[Row]], Awaitable[Sequence[Result | BaseException]]]

_RETRY_DELAYS = (0.05, 0.2, 0.5, 1.0, 2.0, 4.0)

_CUT_OFF = object()  # a leader's outcome until its write returns


class _Slot:
    """One writer: the right to use one connection, kept across batches."""

    __slots__ = ("conn",)

    def __init__(self) -> None:
        self.conn: PooledConnection | None = None


class GroupCommit(Generic[Row, Result]):
    """Batches rows of one kind into ``flush(conn, rows)`` calls, one result per row.

    ``flush`` must be idempotent for a batch (the statements here use
    ``ON CONFLICT DO NOTHING``): after a lost connection the batch is sent
    again, because the first attempt may or may not have committed; after
    any other error its rows are sent again one by one.
    """

    def __init__(
        self,
        name: str,
        pool: Pool,
        flush: Flush[Row, Result],
        *,
        writers: int,
        max_batch: int,
        shields: Shields | None = None,
    ) -> None:
        self._name = name
        self._pool = pool
        self._flush = flush
        self._max_batch = max_batch
        # Seconds between tries after a lost connection.
        self.retry_delays: tuple[float, ...] = _RETRY_DELAYS
        self._slots = [_Slot() for _ in range(writers)]
        self._idle = list(self._slots)
        self._queue: deque[tuple[Row, asyncio.Future[Result]]] = deque()
        self._tg: TaskGroup | None = None
        self._closed = asyncio.Event()
        # Writes are shielded (a started write always finishes), but not
        # forever: the runtime bounds them when it shuts down.
        self._shields = shields if shields is not None else Shields()

    @property
    def name(self) -> str:
        """What it writes (its flush statement's name)."""
        return self._name

    @property
    def busy(self) -> bool:
        """Whether rows are queued or a batch is being written."""
        return bool(self._queue) or len(self._idle) < len(self._slots)

    @property
    def connections_held(self) -> int:
        """Pooled connections the idle writers keep for their next batch."""
        return sum(slot.conn is not None for slot in self._idle)

    async def submit(self, row: Row) -> Result:
        """Write ``row`` and return its result once its statement has committed.

        A write that has started always finishes: a caller cancelled meanwhile
        gets its CancelledError, but the row is still written.
        """
        if self._closed.is_set() or self._tg is None:
            raise DatabaseUnavailableError("The runtime is shut down; nothing more is written")
        if len(self._idle) == len(self._slots) and not self._queue:
            # Leader: nothing is in flight, so write now, from this task (shielded,
            # since the statement runs here). Under load something always is in
            # flight, and rows queue up to share a statement.
            slot = self._idle.pop()
            outcome: Result | BaseException | object = _CUT_OFF
            async with self._shielded(slot):
                try:
                    outcome = (await self._write(slot, [row]))[0]
                finally:
                    self._idle.append(slot)
                    self._drain_soon()
            if outcome is _CUT_OFF:  # the shutdown's bound ended the write
                raise self._abandoned()
            if isinstance(outcome, BaseException):
                raise outcome
            return outcome
        future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self._queue.append((row, future))
        self._drain_soon()
        # The drain task writes the row whatever happens to this caller: a
        # cancelled caller only cancels its future, which the drain then skips.
        return await future

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Own the drain tasks until ``close()``; then write what is queued and let go."""
        try:
            async with anyio.create_task_group() as tg:
                self._tg = tg
                task_status.started()
                await self._closed.wait()
                self._drain_soon()
        finally:
            with anyio.CancelScope(shield=True):
                for slot in self._slots:
                    if slot.conn is not None:
                        await self._pool.release(slot.conn)
                        slot.conn = None

    def close(self) -> None:
        """Stop taking rows; ``run`` returns once everything queued is written."""
        self._closed.set()

    def _abandoned(self) -> DatabaseUnavailableError:
        return DatabaseUnavailableError(
            f"{self._name}: the runtime shut down before the write finished"
        )

    @contextlib.asynccontextmanager
    async def _shielded(self, slot: _Slot) -> AsyncIterator[None]:
        """Shield a write from cancellation, up to the bound a shutdown sets.

        A write cut off leaves its rows unwritten (their callers get a
        DatabaseUnavailableError), and what was not written replays.
        """
        with self._shields.scope() as scope:
            yield
        if scope.cancelled_caught and slot.conn is not None:
            # Cut off mid-statement: the connection's state is unknown.
            conn, slot.conn = slot.conn, None
            terminate(conn)
            with anyio.CancelScope(shield=True):
                await self._pool.release(conn)

    def _drain_soon(self) -> None:
        if self._queue and self._idle and self._tg is not None:
            slot = self._idle.pop()
            self._tg.start_soon(self._drain, slot)

    async def _drain(self, slot: _Slot) -> None:
        batch: list[tuple[Row, asyncio.Future[Result]]] = []
        try:
            async with self._shielded(slot):
                while self._queue:
                    count = min(len(self._queue), self._max_batch)
                    batch = [self._queue.popleft() for _ in range(count)]
                    try:
                        outcome = await self._write(slot, [row for row, _ in batch])
                    except Exception as exc:  # a bug here must not take the runtime down
                        logger.exception("%s: the batch failed", self._name)
                        outcome = [exc] * len(batch)
                    for (_, future), result in zip(batch, outcome, strict=True):
                        if future.done():
                            continue
                        if isinstance(result, BaseException):
                            future.set_exception(result)
                        else:
                            future.set_result(result)
                    batch = []
        finally:
            self._idle.append(slot)
            if self._shields.expired:
                # Cut off: nothing more is written, and nobody waits for it.
                batch += [self._queue.popleft() for _ in range(len(self._queue))]
            for _, future in batch:
                if not future.done():
                    future.set_exception(self._abandoned())

    async def _write(self, slot: _Slot, rows: list[Row]) -> Sequence[Result | BaseException]:
        """Write one batch on the slot's connection; one outcome per row, never raises."""
        try:
            return await self._attempt(slot, rows)
        except Exception as exc:
            if len(rows) == 1:
                return [exc]
            failure = exc
        # A row the server or the driver refuses fails the whole statement; the
        # statement does not say which row, so write each alone.
        logger.warning(
            "%s: a batch of %d rows failed (%s); writing them one by one",
            self._name,
            len(rows),
            type(failure).__name__,
            extra={"action": "group_commit_split"},
        )
        outcomes: list[Result | BaseException] = []
        for row in rows:
            try:
                outcome = (await self._attempt(slot, [row]))[0]
            except Exception as exc:
                outcome = exc
            outcomes.append(outcome)
            if isinstance(outcome, DatabaseUnavailableError):
                # The database stayed away through every retry: the other rows
                # would only wait as long again, each in turn.
                outcomes += [outcome] * (len(rows) - len(outcomes))
                break
        return outcomes

    async def _attempt(self, slot: _Slot, rows: list[Row]) -> Sequence[Result | BaseException]:
        """Flush ``rows`` once, or again after a lost connection.

        Returns:
            One outcome per row; a DatabaseUnavailableError for each once the
            retries are spent.

        Raises:
            Exception: whatever else ``flush`` raised.
        """
        for delay in (*self.retry_delays, None):
            try:
                if slot.conn is None:
                    slot.conn = await acquire_connection(self._pool)
                return await self._flush(slot.conn, rows)
            except Exception as exc:
                if not is_connection_error(exc):
                    raise
                if slot.conn is not None:
                    terminate(slot.conn)
                    await self._pool.release(slot.conn)
                    slot.conn = None
                if delay is None or self._closed.is_set() or self._shields.expired:
                    # Out of retries, or shut off (a bounded shutdown, a crash).
                    return [DatabaseUnavailableError(f"{self._name}: {exc}")] * len(rows)
                logger.warning(
                    "%s: lost the database connection, retrying in %ss",
                    self._name,
                    delay,
                    extra={"action": "group_commit_retry"},
                )
                await anyio.sleep(delay)
        raise AssertionError("unreachable")
