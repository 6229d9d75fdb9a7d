"""Fleet failover: heartbeats, and adopting the PENDING workflows of dead executors.

Every runtime refreshes its executor's heartbeat every ``lease_seconds / 3``
and, as often, adopts PENDING workflows of its app version whose executor has
not heartbeat for ``lease_seconds``. Adoption bumps each workflow's fence in
the claiming statement, so exactly one runtime wins each workflow, and every
later checkpoint of the old owner (which carries the old fence) writes nothing:
a process that was only paused cannot corrupt the history when it wakes up.
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING

import anyio
from anyio.abc import TaskStatus

from dbos_async.clock import now_ms
from dbos_async.recovery import run_claimed, split_exhausted
from dbos_async.systemdb import executors as executors_table
from dbos_async.systemdb import workflows as wf_table

if TYPE_CHECKING:
    from dbos_async.runtime import Runtime

logger = logging.getLogger(__name__)

ADOPT_BATCH = 500
"""Most workflows adopted per round; the next round takes the rest."""


async def heartbeat_and_adopt(
    runtime: Runtime, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED
) -> None:
    """Heartbeat now, then every lease/3 heartbeat again and adopt orphans; runs until cancelled."""
    lease = runtime.config.lease_seconds
    await _heartbeat(runtime)
    task_status.started()
    if math.isinf(lease):
        return
    while True:
        await anyio.sleep(lease / 3)
        try:
            await _heartbeat(runtime)
            while await adopt_orphans(runtime) == ADOPT_BATCH:
                pass
        except Exception as exc:  # a lost database (or a bug) must not stop the runtime
            runtime.reconciler.request()  # an adoption may have committed
            logger.warning("heartbeat failed: %r", exc, extra={"action": "heartbeat"})


async def _heartbeat(runtime: Runtime) -> None:
    async with runtime.connection() as conn:
        await executors_table.upsert_heartbeat(
            conn, runtime.executor_id, runtime.app_name, runtime.app_version
        )


async def adopt_orphans(runtime: Runtime) -> int:
    """Adopt one batch of orphaned workflows and run them here; returns how many were claimed."""
    async with runtime.connection() as conn:
        rows = await executors_table.adopt_orphaned_workflows(
            conn,
            runtime.executor_id,
            runtime.app_version,
            int(runtime.config.lease_seconds * 1000),
            now_ms(),
            ADOPT_BATCH,
            runtime.instance_id,
        )
        if not rows:
            return 0
        runnable, exhausted = split_exhausted(rows)
        if exhausted:
            await wf_table.mark_max_recovery_exceeded(conn, exhausted, now_ms())
        await run_claimed(runtime, conn, runnable)
    logger.info("adopted %d workflows of dead executors", len(rows), extra={"action": "adopt"})
    return len(rows)
