"""The ``schedule_ticks`` table: the latest tick started per cron schedule.

Each function is one round trip.
"""

from __future__ import annotations

from dbos_async.systemdb.pool import Connection
from dbos_async.systemdb.queries import q


async def select_schedule_tick(conn: Connection, schedule_name: str) -> int | None:
    """The latest tick (epoch ms) started for a schedule, or None. One round trip."""
    tick: int | None = await conn.fetchval(q(conn, "select_schedule_tick"), schedule_name)
    return tick


async def record_schedule_tick(
    conn: Connection, schedule_name: str, tick_ms: int, now_ms: int
) -> None:
    """Remember a started tick; never moves the latest tick backwards. One round trip."""
    await conn.execute(q(conn, "record_schedule_tick"), schedule_name, tick_ms, now_ms)
