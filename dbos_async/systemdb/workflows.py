"""The ``workflow_status`` table: one row per workflow.

Each function is one round trip, except ``insert_workflows`` when some IDs
already exist (a second read names them).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from dbos_async.systemdb.pool import Connection, record_dict
from dbos_async.systemdb.queries import q


@dataclass(frozen=True, slots=True)
class NewWorkflow:
    """A row for ``insert_workflows``."""

    workflow_id: str
    name: str
    inputs: str
    app_name: str
    app_version: str
    executor_id: str
    now_ms: int
    parent_workflow_id: str | None = None
    timeout_ms: int | None = None
    deadline_epoch_ms: int | None = None
    claimed_by: str | None = None  # the runtime instance that runs it
    trace_context: str | None = None  # the starter's, as an observer captured it (0011)


@dataclass(frozen=True, slots=True)
class Existing:
    """What ``insert_workflows`` found under an ID that was already taken."""

    name: str
    status: str
    claimed_by: str | None = None  # the runtime instance that last claimed it
    fence: int = 0


@dataclass(frozen=True, slots=True)
class Outcome:
    """A row for ``complete_workflows``."""

    workflow_id: str
    status: str
    output: str | None
    error: str | None
    now_ms: int
    fence: int = 0


async def insert_workflows(conn: Connection, rows: Sequence[NewWorkflow]) -> list[Existing | None]:
    """Record new PENDING workflows; per row, None if inserted, else what already exists."""
    columns = (
        [r.workflow_id for r in rows],
        [r.name for r in rows],
        [r.inputs for r in rows],
        [r.app_name for r in rows],
        [r.app_version for r in rows],
        [r.executor_id for r in rows],
        [r.now_ms for r in rows],
        [r.parent_workflow_id for r in rows],
        [r.timeout_ms for r in rows],
        [r.deadline_epoch_ms for r in rows],
        [r.claimed_by for r in rows],
        [r.trace_context for r in rows],
    )
    if len(rows) == 1:  # the single-row form; its command tag says whether it wrote
        tag = await conn.execute(q(conn, "insert_workflow"), *(c[0] for c in columns))
        inserted = {rows[0].workflow_id} if tag == "INSERT 0 1" else set()
    else:
        inserted = {r[0] for r in await conn.fetch(q(conn, "insert_workflows"), *columns)}
    taken = [r.workflow_id for r in rows if r.workflow_id not in inserted]
    if not taken:
        return [None] * len(rows)
    existing = {
        r["workflow_id"]: Existing(r["name"], r["status"], r["claimed_by"], r["fence"])
        for r in await conn.fetch(q(conn, "select_workflow_names"), taken)
    }
    # Within one batch, only the first row with an ID can have inserted it.
    seen: set[str] = set()
    results: list[Existing | None] = []
    for r in rows:
        first = r.workflow_id in inserted and r.workflow_id not in seen
        seen.add(r.workflow_id)
        results.append(None if first else existing.get(r.workflow_id, Existing(r.name, "PENDING")))
    return results


async def complete_workflows(conn: Connection, rows: Sequence[Outcome]) -> list[bool]:
    """Record the outcomes of finished workflows; per row, whether it was recorded.

    A row is not recorded when its workflow was cancelled (or adopted, or
    deleted) meanwhile: then the row, not this outcome, says how it ended.
    """
    columns = (
        [r.workflow_id for r in rows],
        [r.status for r in rows],
        [r.output for r in rows],
        [r.error for r in rows],
        [r.now_ms for r in rows],
        [r.fence for r in rows],
    )
    if len(rows) == 1:
        return [await conn.fetchval(q(conn, "complete_workflow"), *(c[0] for c in columns)) == 1]
    done = {r[0] for r in await conn.fetch(q(conn, "complete_workflows"), *columns)}
    return [r.workflow_id in done for r in rows]


async def cancel_workflow(
    conn: Connection, workflow_id: str, now_ms: int, fence: int | None = None
) -> tuple[str | None, bool]:
    """Mark a PENDING or ENQUEUED workflow CANCELLED and announce it.

    With ``fence``, only while the row still holds it (a deadline's
    cancellation by the runtime running the workflow). Returns the status it
    had before (None: no such workflow) and whether it changed. One round trip.
    """
    row = await conn.fetchrow(q(conn, "cancel_workflow"), workflow_id, now_ms, fence)
    return (None, False) if row is None else (row["status"], row["changed"])


async def select_workflow_states(
    conn: Connection, workflow_ids: Sequence[str]
) -> dict[str, tuple[str, int]]:
    """Status and fence of each workflow that exists, by ID. One round trip."""
    rows = await conn.fetch(q(conn, "select_workflow_states"), list(workflow_ids))
    return {r["workflow_id"]: (r["status"], r["fence"]) for r in rows}


async def select_workflow_status(conn: Connection, workflow_id: str) -> dict[str, Any] | None:
    """Every column of one workflow, or None."""
    row = await conn.fetchrow(q(conn, "select_workflow_status"), workflow_id)
    return None if row is None else record_dict(row)


async def select_workflow_outcome(conn: Connection, workflow_id: str) -> dict[str, Any] | None:
    """Status, name, output and error of one workflow, or None."""
    row = await conn.fetchrow(q(conn, "select_workflow_outcome"), workflow_id)
    return None if row is None else record_dict(row)


async def mark_max_recovery_exceeded(
    conn: Connection, workflow_ids: Sequence[str], now_ms: int
) -> None:
    """Mark workflows as MAX_RECOVERY_ATTEMPTS_EXCEEDED."""
    await conn.execute(q(conn, "mark_max_recovery_exceeded"), list(workflow_ids), now_ms)


async def resume_workflow(
    conn: Connection,
    workflow_id: str,
    executor_id: str | None,
    app_version: str | None,
    queue_name: str,
    now_ms: int,
    instance: str | None = None,
    names: Sequence[str] = (),
    sql_now_ms: int | None = None,
) -> dict[str, Any] | None:
    """Put a finished-but-not-successful workflow back to work (see the query). One round trip.

    ``instance`` is the runtime instance that runs it when ``executor_id`` is
    given, if its function is one of ``names`` (registered there); else it is
    enqueued for a runtime that has it, keeping its version.

    Returns None if the workflow does not exist; else ``status`` (before) and,
    when it changed, its ``workflow_id``, ``name`` and ``inputs``.
    """
    row = await conn.fetchrow(
        q(conn, "resume_workflow"),
        workflow_id,
        executor_id,
        app_version,
        queue_name,
        now_ms,
        instance,
        list(names),
        sql_now_ms,
    )
    return None if row is None else record_dict(row)


async def select_stranded_workflows(
    conn: Connection,
    executor_id: str,
    instance: str,
    app_version: str,
    running: Sequence[str],
    names: Sequence[str],
) -> dict[str, int]:
    """{workflow_id: fence} of what ``instance`` claimed and does not run.

    ``running`` are the IDs it runs; only workflows named in ``names`` count.
    """
    rows = await conn.fetch(
        q(conn, "select_stranded_workflows"),
        executor_id,
        instance,
        app_version,
        list(running),
        list(names),
    )
    return {r["workflow_id"]: r["fence"] for r in rows}


async def reclaim_stranded_workflows(
    conn: Connection, executor_id: str, instance: str, seen: dict[str, int], now_ms: int
) -> list[dict[str, Any]]:
    """Claim again the workflows of ``seen`` whose fence has not moved; bump it."""
    rows = await conn.fetch(
        q(conn, "reclaim_stranded_workflows"),
        executor_id,
        instance,
        list(seen),
        list(seen.values()),
        now_ms,
    )
    return [record_dict(r) for r in rows]
