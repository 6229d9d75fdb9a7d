"""Recovery: claim and resume PENDING workflows whose runtime instance is gone.

Every PENDING workflow is claimed by one runtime instance (``claimed_by``),
the one that runs it. Several processes may share an executor ID (uvicorn
workers, scripts, containers: all "local" by default), so a workflow is
taken over only when its instance is gone, never because it shares this
executor ID. An instance is gone when it has not heartbeat for the lease, or
when its advisory lock (held by its listener connection for its whole life)
has been free for ``LOCK_SETTLE_SECONDS``; a runtime that shuts down cleanly
deletes its row, which says so at once. (0008_instances.sql, fleet.py.)

At launch, the executor's workflows whose instance is known gone are
claimed and started before launch returns, the first ``RECOVERY_BATCH`` of
them; a task of the runtime claims the rest, then, once the settle period
has passed, those of instances whose lock was free at launch (a process
that was killed a moment ago). The periodic round in fleet.py adopts the
orphans of any executor of this app version the same way.

Each batch is two round trips: one claims it (counting a recovery attempt on
each workflow and bumping its fence), one reads its workflows' recorded
steps. Each workflow then replays from the start, returning recorded step
outcomes until it reaches the first step that never completed.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import anyio

from dbos_async import observers, registry, serialization
from dbos_async.clock import Wake
from dbos_async.errors import SerializationError
from dbos_async.logs import get_logger
from dbos_async.systemdb import executors as executors_table
from dbos_async.systemdb import steps as steps_table
from dbos_async.systemdb import workflows as wf_table
from dbos_async.systemdb.pool import Connection
from dbos_async.workflow import spawn

if TYPE_CHECKING:
    from dbos_async.runtime import Runtime

logger = get_logger(__name__)

RECOVERY_BATCH = 500
"""Most workflows claimed, and whose steps are read, per batch."""

RETRY_SECONDS = (1.0, 30.0)
"""The first and the longest wait before claiming again after a batch failed."""

LOCK_SETTLE_SECONDS = 5.0
"""How long an instance's lock must stay free before the instance counts as gone.

A live instance whose listener connection dropped takes its lock again as it
reconnects (its attempts are at most a second apart); a process that exited
never does.
"""

Suspects = Sequence[executors_table.Suspect]
"""Instances seen with their lock free."""


def _host_key() -> str | None:
    """The kernel (boot ID) and pid namespace this process runs in; None off Linux."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as boot:
            boot_id = boot.read().strip()
        namespace = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return None
    return f"{boot_id}/{namespace}"


HOST_KEY = _host_key()
"""Read once, at import: the event loop never waits on /proc."""


def proven_gone(suspect: executors_table.Suspect) -> bool:
    """Whether a lockless instance is gone for sure: its process does not exist.

    Only a process in this kernel and pid namespace can tell (a hostname is
    no proof: containers may share one). A pid taken by another process since
    proves nothing, and the suspect waits out the settle period.
    """
    if HOST_KEY is None or suspect.host_key != HOST_KEY:
        return False
    try:
        os.kill(suspect.pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # it exists, under another user
        return False
    return False


async def recover_pending(runtime: Runtime) -> int:
    """Start the first batch of this executor's orphaned workflows; returns how many started.

    The rest are recovered by a task of the runtime's workflow group, one batch
    after the other has started (not finished): each batch's workflows run
    while the next is claimed and read.
    """
    async with runtime.connection() as conn:
        suspects = await executors_table.select_lockless_instances(conn, runtime.instance)
    # A predecessor on this host whose process is gone (a restart) is
    # recovered now; the rest once they stay lockless for the settle period.
    gone = [s for s in suspects if proven_gone(s)]
    waiting = [s for s in suspects if s not in gone]
    claimed, started = await claim_batch(runtime, gone, only_executor=runtime.executor_id)
    if claimed or waiting:
        runtime.workflow_group.start_soon(_recover_rest, runtime, gone, claimed > 0, waiting)
    return started


async def claim_batch(
    runtime: Runtime, suspects: Suspects, *, only_executor: str | None
) -> tuple[int, int]:
    """Claim, read and start one batch of orphaned workflows. Two round trips.

    ``suspects``: instances seen with their lock free at least
    ``LOCK_SETTLE_SECONDS`` ago. ``only_executor``: that executor's workflows
    only (None: any executor's). Returns how many workflows were claimed and
    how many started.
    """
    lease = runtime.config.lease_seconds
    async with runtime.connection() as conn:
        rows = await executors_table.claim_orphaned_workflows(
            conn,
            runtime.instance,
            only_executor=only_executor,
            lease_ms=None if math.isinf(lease) else int(lease * 1000),
            suspects=suspects,
            now_ms=runtime.clock.now_ms(),
            limit=RECOVERY_BATCH,
            # A workflow this process cannot run is left for one that can, never failed.
            names=[entry.name for entry in registry.workflows()],
            sql_now_ms=runtime.clock.sql_now_ms(),
        )
        if not rows:
            return 0, 0
        runnable, exhausted = split_exhausted(rows)
        if exhausted:
            await wf_table.mark_max_recovery_exceeded(conn, exhausted, runtime.clock.now_ms())
        origin = observers.RECOVERY if only_executor is not None else observers.ADOPTION
        started = await run_claimed(runtime, conn, runnable, origin)
    logger.info("recovering %d workflows", started, extra={"action": "recover"})
    return len(rows), started


async def _recover_rest(runtime: Runtime, gone: Suspects, more: bool, suspects: Suspects) -> None:
    """Recover batch after batch until a claim finds nothing left; then the suspects'.

    Each batch's rows are claimed by this instance, so the next leaves them
    out, and this ends. A batch that fails is claimed again later (a lost
    database must not leave workflows unrecovered until the next launch); if
    its claim had committed, the reconciler runs those rows.
    """
    if more:
        await _claim_until_empty(runtime, gone)
    if suspects:
        await runtime.clock.sleep(LOCK_SETTLE_SECONDS, Wake.UPKEEP)
        await _claim_until_empty(runtime, suspects)
    logger.info("recovery done", extra={"action": "recovered"})


async def _claim_until_empty(runtime: Runtime, suspects: Suspects) -> None:
    first, longest = RETRY_SECONDS
    delay = first
    while True:
        try:
            claimed, _ = await claim_batch(runtime, suspects, only_executor=runtime.executor_id)
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


async def run_claimed(
    runtime: Runtime,
    conn: Connection,
    rows: Sequence[dict[str, Any]],
    origin: str = observers.RECOVERY,
    queue_name: str | None = None,
) -> int:
    """Replay workflows this runtime just claimed (PENDING, executor = this one).

    ``origin`` (observers.py) says how they were claimed; ``queue_name`` the
    queue they came from (a dequeue).

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
        return await _run_claimed(runtime, conn, rows, origin, queue_name)


async def _run_claimed(
    runtime: Runtime,
    conn: Connection,
    rows: Sequence[dict[str, Any]],
    origin: str,
    queue_name: str | None,
) -> int:
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
            poisoned.append(_cannot_run(row, exc, runtime.clock.now_ms()))
            return
        ctx = spawn(
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
        if runtime.observers:
            ctx.origin, ctx.queue_name = origin, queue_name
            ctx.recovery_attempt = row.get("recovery_attempts", 0)
            ctx.trace_context = row.get("trace_context")
            created, started = row.get("created_at"), row.get("started_at")
            # Its first dequeue: a resumed one was created long before it waited.
            if created is not None and started is not None and not row.get("has_steps"):
                ctx.queue_wait_seconds = max(0, started - created) / 1000

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


def _cannot_run(row: dict[str, Any], exc: Exception, at_ms: int) -> wf_table.Outcome:
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
        wid, "ERROR", None, serialization.encode_exception(error), at_ms, row.get("fence", 0)
    )
