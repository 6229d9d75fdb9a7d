"""Recovery: resume this executor's PENDING workflows of the current app version.

Two round trips for any number of workflows: one claims them (counting a
recovery attempt on each), one reads all their recorded steps. Each then
replays from the start, returning recorded step outcomes until it reaches the
first step that never completed.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from dbos_async import registry, serialization
from dbos_async.systemdb import steps as steps_table
from dbos_async.systemdb import workflows as wf_table
from dbos_async.systemdb.pool import Connection
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
        exhausted: set[str] = set()
        for row in rows:
            entry = registry.lookup(row["name"])
            limit = entry.options.get("max_recovery_attempts", 0) if entry else 0
            if entry is not None and row["recovery_attempts"] > limit:
                exhausted.add(row["workflow_id"])
        if exhausted:
            await wf_table.mark_max_recovery_exceeded(conn, sorted(exhausted), now_ms())
            logger.warning("%d workflows exceeded their recovery attempts", len(exhausted))
        started = await run_claimed(
            runtime, conn, [r for r in rows if r["workflow_id"] not in exhausted]
        )
    logger.info("recovering %d workflows", started, extra={"action": "recover"})
    return started


async def run_claimed(runtime: Runtime, conn: Connection, rows: Sequence[dict[str, Any]]) -> int:
    """Replay workflows this runtime just claimed (PENDING, executor = this one).

    ``rows`` need ``workflow_id``, ``name``, ``inputs`` and optionally
    ``deadline_epoch_ms`` and ``has_steps``. One round trip reads the recorded
    steps of them all, skipped when every row says ``has_steps=False`` (a
    dequeued workflow that never ran). Returns how many were started
    (unregistered names are logged and skipped).
    """
    runnable = []
    for row in rows:
        entry = registry.lookup(row["name"])
        if entry is None or entry.kind != "workflow":
            logger.error(
                "cannot run workflow %s: %r is not registered in this process",
                row["workflow_id"],
                row["name"],
                extra={"workflow_id": row["workflow_id"]},
            )
        else:
            runnable.append((row, entry))
    if not runnable:
        return 0
    ran = [row["workflow_id"] for row, _ in runnable if row.get("has_steps", True)]
    recorded = await steps_table.select_steps_of(conn, ran) if ran else {}
    for row, entry in runnable:
        args, kwargs = serialization.decode_inputs(row["inputs"], entry.fn)
        wid = row["workflow_id"]
        steps = recorded.get(wid) or {}
        spawn(runtime, entry, wid, args, kwargs, steps, row.get("deadline_epoch_ms"))
    return len(runnable)
