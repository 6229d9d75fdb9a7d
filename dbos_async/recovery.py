"""Recovery: resume this executor's PENDING workflows of the current app version.

Two round trips for any number of workflows: one claims them (counting a
recovery attempt on each), one reads all their recorded steps. Each then
replays from the start, returning recorded step outcomes until it reaches the
first step that never completed.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from dbos_async import registry, serialization
from dbos_async.systemdb import steps as steps_table
from dbos_async.systemdb import workflows as wf_table
from dbos_async.workflow import now_ms, spawn

if TYPE_CHECKING:
    from dbos_async.runtime import Runtime

logger = logging.getLogger(__name__)


async def recover_pending(runtime: Runtime) -> int:
    """Start every recoverable workflow as a task; returns how many were started."""
    async with runtime.connection() as conn:
        rows = await wf_table.claim_recoverable_workflows(
            conn, runtime.executor_id, runtime.app_version, now_ms()
        )
        if not rows:
            return 0
        runnable, exhausted = [], []
        for row in rows:
            entry = registry.lookup(row["name"])
            if entry is None or entry.kind != "workflow":
                logger.error(
                    "cannot recover workflow %s: %r is not registered in this process",
                    row["workflow_id"],
                    row["name"],
                    extra={"workflow_id": row["workflow_id"]},
                )
            elif row["recovery_attempts"] > entry.options["max_recovery_attempts"]:
                exhausted.append(row["workflow_id"])
            else:
                runnable.append((row, entry))
        if exhausted:
            await wf_table.mark_max_recovery_exceeded(conn, exhausted, now_ms())
            logger.warning("%d workflows exceeded their recovery attempts", len(exhausted))
        recorded = await steps_table.select_steps_of(
            conn, [row["workflow_id"] for row, _ in runnable]
        )
    for row, entry in runnable:
        args, kwargs = serialization.decode_inputs(row["inputs"], entry.fn)
        wid = row["workflow_id"]
        spawn(runtime, entry, wid, args, kwargs, recorded[wid], row["deadline_epoch_ms"])
    logger.info("recovering %d workflows", len(runnable), extra={"action": "recover"})
    return len(runnable)
