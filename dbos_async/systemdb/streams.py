"""The ``streams`` table. Every function is one round trip."""

from __future__ import annotations

from dataclasses import dataclass

from dbos_async.systemdb.pool import Connection
from dbos_async.systemdb.queries import q
from dbos_async.systemdb.steps import StepRecord


@dataclass(frozen=True, slots=True)
class Entry:
    """One stream entry: a value, or the closing marker."""

    offset: int
    value: str | None
    closed: bool


async def write_stream(
    conn: Connection,
    key: str,
    value: str | None,
    step: StepRecord,
    *,
    close: bool,
    notify: bool,
) -> None:
    """Append a value (or the closing marker) as the workflow step ``step``."""
    await conn.fetchval(
        q(conn, "write_stream"),
        step.workflow_id,
        step.step_id,
        key,
        value,
        close,
        step.completed_at,
        notify,
        step.fence,
        step.branch,
        step.origin,
    )


async def notify_stream(conn: Connection, workflow_id: str) -> None:
    """Announce writes to a workflow's streams."""
    await conn.fetchval(q(conn, "notify_stream"), workflow_id)


async def read_stream(
    conn: Connection, workflow_id: str, key: str, after: int
) -> tuple[str | None, list[Entry]]:
    """The workflow's status (None: no such workflow) and the entries after ``after``."""
    rows = await conn.fetch(q(conn, "read_stream"), workflow_id, key, after)
    if not rows:
        return None, []
    entries = [Entry(r["offset"], r["value"], r["closed"]) for r in rows if r["offset"] is not None]
    return rows[0]["status"], entries
