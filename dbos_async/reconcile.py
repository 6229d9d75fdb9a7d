"""Reconciliation: no workflow stays PENDING on a live runtime that does not run it.

A claim (a start, a dequeue, a recovery, an adoption, a resume, a fork) is
one statement; when its reply is lost, the rows it claimed may be PENDING
under this runtime's executor with nobody running them, and with a
concurrency limit they hold the queue's slots for the whole fleet. Every row
a runtime claims records the runtime's instance (``claimed_by``), so it can
find its own such rows later and run them, without ever touching a workflow
that another process sharing its executor ID runs.

Two phases, so a claim whose reply is merely slow is not taken for a lost
one: first read which of this instance's PENDING rows it does not run, with
their fences; ``SETTLE_SECONDS`` later, claim again those still not running
here whose fence has not moved, bumping it. A claim in flight during the
first read has spawned its workflows by the second (they are then excluded),
and anything else that touched a row (a cancel, an adoption, a resume)
changed its status or fence.

It runs every ``lease_seconds / 3`` as a net, and soon after any claim whose
outcome is unknown (``request()``).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING

import anyio
from anyio.abc import TaskStatus

from dbos_async import observers, registry
from dbos_async.clock import Wake
from dbos_async.logs import get_logger
from dbos_async.recovery import run_claimed
from dbos_async.systemdb import workflows as wf_table

if TYPE_CHECKING:
    from dbos_async.runtime import Runtime

logger = get_logger(__name__)

_RETRY_DELAYS = (0.5, 1.0, 2.0, 5.0, 10.0)

SETTLE_SECONDS = 2.0
"""Between seeing a row stranded and claiming it again: far longer than a
claim takes from its commit to starting its workflows."""


class Reconciler:
    """Finds and runs this runtime's stranded claims; see the module docstring."""

    def __init__(self, runtime: Runtime, settle_seconds: float = SETTLE_SECONDS) -> None:
        self._runtime = runtime
        self._wake = asyncio.Event()
        self.settle_seconds = settle_seconds
        self._starting = 0  # claims between their commit and their workflows' start
        self._idle = asyncio.Event()
        self._idle.set()

    @contextlib.contextmanager
    def starting(self) -> Iterator[None]:
        """Mark claimed workflows being started (reading their histories takes a while).

        The second phase waits until no claim is between its commit and its
        start, so rows only slow to start are never taken for stranded ones.
        """
        self._starting += 1
        self._idle.clear()
        try:
            yield
        finally:
            self._starting -= 1
            if not self._starting:
                self._idle.set()

    def request(self) -> None:
        """A claim's outcome is unknown: reconcile soon, not only at the next period."""
        self._wake.set()

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Reconcile every lease/3 and on request; runs until cancelled."""
        period = self._runtime.config.lease_seconds / 3
        failures = 0
        task_status.started()
        while True:
            if failures:
                # After a failure, back off: requests keep coming while the
                # database is away (every failed claim makes one).
                await anyio.sleep(min(period, _RETRY_DELAYS[min(failures, len(_RETRY_DELAYS)) - 1]))
            else:
                clock = self._runtime.clock
                with clock.scope(clock.time() + period, Wake.UPKEEP):
                    await self._wake.wait()
            self._wake.clear()
            try:
                await self.reconcile()
                failures = 0
            except Exception as exc:  # a lost database must not stop the runtime
                failures += 1
                logger.warning("reconciling claims failed: %r", exc, extra={"action": "reconcile"})

    async def reconcile(self) -> int:
        """One round of both phases; returns how many workflows it started."""
        runtime = self._runtime
        async with runtime.connection() as conn:
            seen = await wf_table.select_stranded_workflows(
                conn,
                runtime.executor_id,
                runtime.instance_id,
                runtime.app_version,
                list(runtime.local),
                [entry.name for entry in registry.workflows()],
            )
        if not seen:
            return 0
        await anyio.sleep(self.settle_seconds)
        await self._idle.wait()
        for workflow_id in [w for w in seen if w in runtime.local]:
            del seen[workflow_id]  # started meanwhile: it was only slow
        if not seen:
            return 0
        async with runtime.connection() as conn:
            rows = await wf_table.reclaim_stranded_workflows(
                conn, runtime.executor_id, runtime.instance_id, seen, runtime.clock.now_ms()
            )
            if not rows:
                return 0
            started = await run_claimed(runtime, conn, rows, observers.RECONCILE)
        logger.warning(
            "started %d workflows claimed here that nothing ran (a claim's reply or"
            " an outcome was lost)",
            started,
            extra={"action": "reconcile"},
        )
        return started
