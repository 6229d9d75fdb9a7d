"""Group commit: writes submitted while a statement is in flight share the next one.

A lone writer pays one round trip. Under load, rows that arrive while the
writers are busy queue up and go out together as one multi-row statement whose
commit every submitter awaits. That is how thousands of concurrent workflows
checkpoint over a handful of connections.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

import anyio
from anyio.abc import TaskStatus

from dbos_async.errors import DatabaseUnavailableError
from dbos_async.systemdb.pool import Connection, Pool, is_connection_error

logger = logging.getLogger(__name__)

Row = TypeVar("Row")
Result = TypeVar("Result")

Flush = Callable[[Connection, Sequence[Row]], Awaitable[Sequence[Result]]]

_RETRY_DELAYS = (0.05, 0.2, 0.5, 1.0, 2.0, 4.0)


class GroupCommit(Generic[Row, Result]):
    """Batches rows of one kind into ``flush(conn, rows)`` calls, one row result per row.

    ``flush`` must be idempotent for a batch (the statements here use
    ``ON CONFLICT DO NOTHING``): after a lost connection the batch is sent
    again, because the first attempt may or may not have committed.
    """

    def __init__(
        self, name: str, pool: Pool, flush: Flush[Row, Result], *, writers: int, max_batch: int
    ) -> None:
        self._name = name
        self._pool = pool
        self._flush = flush
        self._writers = writers
        self._max_batch = max_batch
        self._queue: deque[tuple[Row, asyncio.Future[Result]]] = deque()
        self._wakeup = asyncio.Event()
        self._closing = False

    async def submit(self, row: Row) -> Result:
        """Write ``row`` and return its result once its statement has committed.

        The wait is shielded: a cancelled caller still waits for a write that is
        already on its way, so no checkpoint is left half-known.
        """
        if self._closing:
            raise DatabaseUnavailableError("The runtime is shut down; nothing more is written")
        future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self._queue.append((row, future))
        self._wakeup.set()
        with anyio.CancelScope(shield=True):
            result = await future
        return result

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Run the writer tasks until ``close()`` and the queue is drained."""
        async with anyio.create_task_group() as tg:
            for _ in range(self._writers):
                tg.start_soon(self._writer)
            task_status.started()

    def close(self) -> None:
        """Let the writers exit once everything queued so far is written."""
        self._closing = True
        self._wakeup.set()

    async def _writer(self) -> None:
        # Shielded: shutdown ends the writers through close(), after the last
        # workflow has handed in its checkpoint, never by cancelling a write.
        with anyio.CancelScope(shield=True):
            while True:
                while not self._queue:
                    if self._closing:
                        return
                    self._wakeup.clear()
                    await self._wakeup.wait()
                batch = [
                    self._queue.popleft() for _ in range(min(len(self._queue), self._max_batch))
                ]
                await self._write(batch)

    async def _write(self, batch: list[tuple[Row, asyncio.Future[Result]]]) -> None:
        rows = [row for row, _ in batch]
        for delay in (*_RETRY_DELAYS, None):
            try:
                async with self._pool.acquire() as conn:
                    results = await self._flush(conn, rows)
            except Exception as exc:
                if delay is not None and is_connection_error(exc) and not self._closing:
                    logger.warning(
                        "%s: lost the database connection, retrying in %ss",
                        self._name,
                        delay,
                        extra={"action": "group_commit_retry"},
                    )
                    await anyio.sleep(delay)
                    continue
                if is_connection_error(exc):
                    exc = DatabaseUnavailableError(f"{self._name}: {exc}")
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                return
            for (_, future), result in zip(batch, results, strict=True):
                if not future.done():
                    future.set_result(result)
            return
