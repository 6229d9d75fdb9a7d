"""The ``executors`` table: heartbeats, and adoption of a dead executor's workflows."""

from __future__ import annotations

from typing import Any

from dbos_async.systemdb.pool import Connection, record_dict
from dbos_async.systemdb.queries import q


async def upsert_heartbeat(
    conn: Connection, executor_id: str, app_name: str, app_version: str
) -> None:
    """Record that this executor is alive, by the database's clock. One round trip."""
    await conn.execute(q(conn, "upsert_heartbeat"), executor_id, app_name, app_version)


async def adopt_orphaned_workflows(
    conn: Connection,
    executor_id: str,
    app_version: str,
    lease_ms: int,
    now_ms: int,
    limit: int,
    instance: str,
) -> list[dict[str, Any]]:
    """Claim PENDING workflows whose executor has not heartbeat for ``lease_ms``. One round trip.

    The lease is measured on the database's clock, like the heartbeats.

    Each returned row (``workflow_id``, ``name``, ``inputs``,
    ``recovery_attempts``, ``deadline_epoch_ms``, ``fence``) now belongs to
    ``executor_id`` (runtime ``instance``) under its new fence.
    """
    rows = await conn.fetch(
        q(conn, "adopt_orphaned_workflows"),
        executor_id,
        app_version,
        lease_ms,
        now_ms,
        limit,
        instance,
    )
    return [record_dict(r) for r in rows]


async def count_live_executors(conn: Connection, app_version: str, lease_ms: int) -> int:
    """Executors of ``app_version`` that heartbeat within ``lease_ms``. One round trip."""
    return int(await conn.fetchval(q(conn, "count_live_executors"), app_version, lease_ms))
