"""Recovery: resume this executor's PENDING workflows of the current app version.

Two round trips for any number of workflows: one claims them (counting a
recovery attempt on each, and bumping their fence), one reads all their
recorded steps. Each then replays from the start, returning recorded step
outcomes until it reaches the first step that never completed.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from dbos_async import registry, serialization
from dbos_async.clock import now_ms
from dbos_async.errors import SerializationError
from dbos_async.systemdb import steps as steps_table
from dbos_async.systemdb import workflows as wf_table
from dbos_async.systemdb.pool import Connection
from dbos_async.workflow import spawn

if TYPE_CHECKING:
    from dbos_async.runtime import Runtime

logger = logging.getLogger(__name__)


async def recover_pending(runtime: Runtime) -> int:
    """Start every recoverable workflow as a task; returns how many were started."""
    async with runtime.connection() as conn:
        rows = await wf_table.claim_recoverable_workflows(
            conn, runtime.executor_id, runtime.app_version, now_ms(), runtime.instance_id
        )
        if not rows:
            return 0
        runnable, exhausted = split_exhausted(rows)
        if exhausted:
            await wf_table.mark_max_recovery_exceeded(conn, exhausted, now_ms())
        started = await run_claimed(runtime, conn, runnable)
    logger.info("recovering %d workflows", started, extra={"action": "recover"})
    return started


def split_exhausted(
    rows: Sequence[dict[str, Any]],
) -> tuple[list[dict[str, Any]], list[str]]:
    """Split claimed rows into those to run and the IDs past their max_recovery_attempts."""
    runnable, exhausted = [], []
    for row in rows:
        entry = registry.lookup(row["name"])
        limit = entry.options.get("max_recovery_attempts", 0) if entry else 0
        if entry is not None and row["recovery_attempts"] > limit:
            exhausted.append(row["workflow_id"])
            logger.warning(
                "workflow %s exceeded its %d recovery attempts",
                row["workflow_id"],
                limit,
                extra={"workflow_id": row["workflow_id"]},
            )
        else:
            runnable.append(row)
    return runnable, exhausted


async def run_claimed(runtime: Runtime, conn: Connection, rows: Sequence[dict[str, Any]]) -> int:
    """Replay workflows this runtime just claimed (PENDING, executor = this one).

    ``rows`` need ``workflow_id``, ``name``, ``inputs`` and optionally
    ``deadline_epoch_ms``, ``fence`` (the token the claim produced),
    ``branched_steps`` (False: a history with flat step IDs) and
    ``has_steps``. One round trip reads the recorded steps of them all,
    skipped when every row says ``has_steps=False`` (a dequeued workflow that
    never ran). Returns how many were started
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
    poisoned: list[wf_table.Outcome] = []
    for row, entry in runnable:
        wid = row["workflow_id"]
        try:
            args, kwargs = serialization.decode_inputs(row["inputs"], entry.fn)
        except Exception as exc:
            # One row that cannot run must not stop the others (nor, at launch,
            # the runtime): it ends as ERROR, saying why.
            poisoned.append(_cannot_run(row, exc))
            continue
        spawn(
            runtime,
            entry,
            wid,
            args,
            kwargs,
            recorded.get(wid) or {},
            row.get("deadline_epoch_ms"),
            fence=row.get("fence", 0),
            branched=row.get("branched_steps", True),
        )
    for outcome in poisoned:
        await runtime.completion_writer.submit(outcome)
    return len(runnable) - len(poisoned)


def _cannot_run(row: dict[str, Any], exc: Exception) -> wf_table.Outcome:
    wid = row["workflow_id"]
    logger.error(
        "workflow %s (%s) cannot run: its recorded inputs do not decode (%r)",
        wid,
        row["name"],
        exc,
        extra={"action": "poison", "workflow_id": wid},
    )
    error = SerializationError(
        f"Workflow {wid!r} ({row['name']}) cannot run: its recorded inputs do not decode: {exc}"
    )
    return wf_table.Outcome(
        wid, "ERROR", None, serialization.encode_exception(error), now_ms(), row.get("fence", 0)
    )
