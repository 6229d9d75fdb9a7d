"""The ``executors`` table: heartbeats, and adoption of a dead executor's workflows."""

from __future__ import annotations

from typing import Any

from dbos_async.systemdb.pool import Connection, record_dict
from dbos_async.systemdb.queries import q


async def upsert_heartbeat(
    conn: Connection, executor_id: str, app_name: str, app_version: str, now_ms: int
) -> None:
    """Record that this executor is alive. One round trip."""
    await conn.execute(q("upsert_heartbeat"), executor_id, app_name, app_version, now_ms)


async def adopt_orphaned_workflows(
    conn: Connection,
    executor_id: str,
    app_version: str,
    stale_before_ms: int,
    now_ms: int,
    limit: int,
) -> list[dict[str, Any]]:
    """Claim PENDING workflows whose executor stopped heartbeating. One round trip.

    Each returned row (``workflow_id``, ``name``, ``inputs``,
    ``recovery_attempts``, ``deadline_epoch_ms``, ``fence``) now belongs to
    ``executor_id`` under its new fence.
    """
    rows = await conn.fetch(
        q("adopt_orphaned_workflows"), executor_id, app_version, stale_before_ms, now_ms, limit
    )
    return [record_dict(r) for r in rows]
