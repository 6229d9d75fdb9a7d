"""Recovery: resume this executor's PENDING workflows of the current app version.

A batch at a time, so that neither launch nor memory grows with the number
of PENDING workflows: launch claims and starts the first ``RECOVERY_BATCH``,
and a task of the runtime recovers the rest, one batch after another. Each
batch is two round trips: one claims it (counting a recovery attempt on each
workflow, and bumping its fence), one reads its workflows' recorded steps.
Each workflow then replays from the start, returning recorded step outcomes
until it reaches the first step that never completed.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import anyio

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

RECOVERY_BATCH = 500
"""Most workflows claimed, and whose steps are read, per batch (as ADOPT_BATCH in fleet.py)."""

RETRY_SECONDS = (1.0, 30.0)
"""The first and the longest wait before claiming again after a batch failed."""


async def recover_pending(runtime: Runtime) -> int:
    """Start the first batch of recoverable workflows; returns how many were started.

    The rest are recovered by a task of the runtime's workflow group, one batch
    after the other has started (not finished): each batch's workflows run
    while the next is claimed and read.
    """
    claimed, started, watermark = await recover_batch(runtime, None)
    if claimed:
        runtime.workflow_group.start_soon(_recover_rest, runtime, watermark)
    return started


async def recover_batch(runtime: Runtime, watermark: int | None) -> tuple[int, int, int | None]:
    """Claim, read and start one batch. Two round trips.

    ``watermark`` is None for a recovery's first batch (see the query
    ``claim_recoverable_workflows``). Returns how many workflows were claimed
    and started, and the watermark for the next batches.
    """
    async with runtime.connection() as conn:
        rows = await wf_table.claim_recoverable_workflows(
            conn,
            runtime.executor_id,
            runtime.app_version,
            now_ms(),
            runtime.instance_id,
            RECOVERY_BATCH,
            watermark,
        )
        if not rows:
            return 0, 0, watermark
        runnable, exhausted = split_exhausted(rows)
        if exhausted:
            await wf_table.mark_max_recovery_exceeded(conn, exhausted, now_ms())
        started = await run_claimed(runtime, conn, runnable)
    logger.info("recovering %d workflows", started, extra={"action": "recover"})
    return len(rows), started, rows[0]["watermark"]


async def _recover_rest(runtime: Runtime, watermark: int | None) -> None:
    """Recover batch after batch until a claim finds nothing left.

    Each batch leaves the rows it claimed out of the next (they are claimed
    by this instance), so this ends. A batch that fails is claimed again
    later (a lost database must not leave workflows unrecovered until the
    next launch); if its claim had committed, the reconciler runs those rows.
    """
    first, longest = RETRY_SECONDS
    delay = first
    while True:
        try:
            claimed, _, watermark = await recover_batch(runtime, watermark)
        except Exception as exc:
            runtime.reconciler.request()  # the claim may have committed
            logger.warning(
                "recovering a batch failed: %r; trying again in %.0f s",
                exc,
                delay,
                extra={"action": "recover"},
            )
            await anyio.sleep(delay)
            delay = min(delay * 2, longest)
            continue
        if not claimed:
            logger.info("recovery done", extra={"action": "recovered"})
            return
        delay = first


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
    ``has_steps``. Their recorded steps are read a page at a time (one round
    trip for most batches), each workflow starting as soon as its history is
    read, so a batch's whole history is never held at once; skipped when every
    row says ``has_steps=False`` (a dequeued workflow that never ran). Returns
    how many were started (unregistered names are logged and skipped).
    """
    with runtime.reconciler.starting():
        return await _run_claimed(runtime, conn, rows)


async def _run_claimed(runtime: Runtime, conn: Connection, rows: Sequence[dict[str, Any]]) -> int:
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
    poisoned: list[wf_table.Outcome] = []

    def start(row: dict[str, Any], entry: registry.Registered, recorded: dict[Any, Any]) -> None:
        try:
            args, kwargs = serialization.decode_inputs(row["inputs"], entry.fn)
        except Exception as exc:
            # One row that cannot run must not stop the others (nor, at launch,
            # the runtime): it ends as ERROR, saying why.
            poisoned.append(_cannot_run(row, exc))
            return
        spawn(
            runtime,
            entry,
            row["workflow_id"],
            args,
            kwargs,
            recorded,
            row.get("deadline_epoch_ms"),
            fence=row.get("fence", 0),
            branched=row.get("branched_steps", True),
        )

    waiting = {}  # those that may have a history, until it is read
    for row, entry in runnable:
        if row.get("has_steps", True):
            waiting[row["workflow_id"]] = (row, entry)
        else:
            start(row, entry, {})
    if waiting:
        async for wid, recorded in steps_table.select_steps_paged(conn, list(waiting)):
            start(*waiting.pop(wid), recorded)
        for row, entry in waiting.values():  # nothing recorded after all
            start(row, entry, {})
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
