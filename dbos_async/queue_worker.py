"""The dequeue loop: one task per queue, woken by NOTIFY, claiming within exact limits.

**Why the limits cannot be exceeded.** A claim is one transaction:
``lock_queue`` takes ``pg_advisory_xact_lock`` on the queue (or partition),
then a separate statement counts the queue's PENDING rows and recent starts
and claims at most what is left, ``FOR UPDATE SKIP LOCKED``. Claimers of a
queue are therefore serialized, and because the counting statement starts
after the lock is granted (in READ COMMITTED each statement takes a new
snapshot, and a transaction is visible before its locks are released), every
claim sees every earlier claim. Only claims make a queued row PENDING, and
rows leave PENDING only by finishing, so ``concurrency`` and
``worker_concurrency`` hold; ``started_at`` comes from the database clock
after the lock, so any window of ``period`` holds at most ``limit`` starts.
PENDING rows of a dead executor keep counting until they recover and finish.

**Wake-ups.** Enqueues and completions announce ``q:<queue>``. Each loop
registers its watch before its first claim and claims again after every
wake; a claim that filled its batch claims again at once, and one held back
by the rate limiter or a delayed row sleeps until the database says the next
start is allowed. ``POLL_SECONDS`` is only a safety net.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import anyio
import anyio.lowlevel
from anyio.abc import TaskGroup, TaskStatus

from dbos_async import observers, registry
from dbos_async import queue as queue_module
from dbos_async.logs import get_logger
from dbos_async.management import INTERNAL_QUEUE
from dbos_async.queue import Queue
from dbos_async.recovery import run_claimed
from dbos_async.systemdb import queues as queues_table

if TYPE_CHECKING:
    from dbos_async.runtime import Runtime

logger = get_logger(__name__)

CLAIM_BATCH = 100
"""Most workflows one claim takes: dispatching a batch never holds the event loop long."""

POLL_SECONDS = 10.0
"""Longest an idle loop waits without a notification before it claims anyway."""

_ERROR_DELAYS = (0.1, 0.5, 1.0, 2.0, 5.0)


class QueueWorker:
    """Dequeues this runtime's declared queues and the internal queue."""

    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime
        self._tg: TaskGroup | None = None

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Serve every queue until cancelled; ``started()`` once every loop is watching."""
        async with anyio.create_task_group() as tg:
            self._tg = tg
            await tg.start(self._serve, queue_module.internal_queue())
            for queue in queue_module.registered_queues():
                await tg.start(self._serve, queue)
            undo = queue_module.on_register(self._add)  # queues declared after launch
            try:
                task_status.started()
                await anyio.sleep_forever()
            finally:
                undo()

    def _add(self, queue: Queue) -> None:
        if self._tg is not None:
            self._tg.start_soon(self._serve, queue)

    async def _serve(
        self, queue: Queue, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        failures = 0
        with self._runtime.listener.watch("q", queue.name) as woken:
            task_status.started()
            while True:
                try:
                    full, retry_in = await self.claim(queue)
                    failures = 0
                except Exception as exc:
                    # A lost database (or a bug) must not stop the queue for good.
                    # The claim may have committed: its rows, if any, are reconciled.
                    self._runtime.reconciler.request()
                    delay = _ERROR_DELAYS[min(failures, len(_ERROR_DELAYS) - 1)]
                    failures += 1
                    logger.warning(
                        "queue %s: claim failed (%r); retrying in %ss",
                        queue.name,
                        exc,
                        delay,
                        extra={"action": "claim", "queue": queue.name},
                    )
                    await anyio.sleep(delay)
                    continue
                if full:
                    await anyio.lowlevel.checkpoint()  # let the spawned workflows start first
                    continue
                await woken.wait(retry_in, self._runtime.clock, poll=POLL_SECONDS)

    async def claim(self, queue: Queue) -> tuple[bool, float | None]:
        """Claim and start what the limits allow, partition by partition.

        Returns whether some claim filled its batch (claim again now) and the
        seconds until the limiter or a delayed row allows more (None: wait for
        a notification).
        """
        runtime = self._runtime
        limits = queues_table.Limits(
            want=CLAIM_BATCH,
            concurrency=queue.concurrency,
            worker_concurrency=queue.worker_concurrency,
            limit=int(queue.limiter["limit"]) if queue.limiter else None,
            period_ms=max(1, round(queue.limiter["period"] * 1000)) if queue.limiter else None,
            # Resumed workflows land on the internal queue and keep no deadline.
            start_timeouts=queue.name != INTERNAL_QUEUE,
        )
        names = [entry.name for entry in registry.workflows()]
        full = False
        retry_ms: int | None = None
        async with runtime.connection() as conn:
            partitions: list[str | None] = [None]
            if queue.partition_queue:
                partitions = list(await queues_table.select_queue_partitions(conn, queue.name))
            for key in partitions:
                # Shielded: a claim that committed is started here (a shutdown
                # then cancels it as PENDING, and this executor recovers it).
                with runtime.shields.scope():
                    async with conn.transaction():
                        await queues_table.lock_queue(conn, queue.name, key)
                        claim = await queues_table.claim_queued_workflows(
                            conn,
                            queue.name,
                            key,
                            runtime.executor_id,
                            runtime.app_version,
                            limits,
                            names,
                            runtime.instance_id,
                            runtime.clock.now_ms(),
                            runtime.clock.sql_now_ms(),
                        )
                    if claim.rows:
                        await run_claimed(runtime, conn, claim.rows, observers.DEQUEUE, queue.name)
                        for row in claim.rows:  # waiters here switch to the local task
                            runtime.listener.fire("w", row["workflow_id"])
                full = full or len(claim.rows) >= limits.want
                if claim.retry_in_ms is not None:
                    retry_ms = min(retry_ms or claim.retry_in_ms, claim.retry_in_ms)
                if claim.rows:
                    logger.debug(
                        "queue %s: claimed %d",
                        queue.name,
                        len(claim.rows),
                        extra={"action": "claim", "queue": queue.name},
                    )
        return full, None if retry_ms is None else max(retry_ms, 1) / 1000
