"""The dashboard's reads, one function per thing a page shows (SQL in ``dashboard.sql``)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from dbos_async.dashboard.source import Source
from dbos_async.systemdb.pool import record_dict
from dbos_async.systemdb.queries import q

PAGE_SIZE = 50
PAYLOAD_CHARS = 4000
"""Longest payload (inputs, output, event and stream values) a page shows."""


@dataclass(frozen=True)
class ListFilter:
    """The workflow list's filters (None or empty: all)."""

    statuses: Sequence[str] = ()
    names: Sequence[str] = ()
    queues: Sequence[str] = ()
    versions: Sequence[str] = ()
    executors: Sequence[str] = ()
    created_from: int | None = None  # epoch ms, inclusive
    created_to: int | None = None
    id_prefix: str | None = None


@dataclass(frozen=True)
class Page:
    """One page of the workflow list, and where the next one starts (None: the last)."""

    rows: list[dict[str, Any]]
    next_after: tuple[int, str] | None


@dataclass
class Overview:
    """What the overview shows."""

    counts_1h: dict[str, int] = field(default_factory=dict)
    counts_24h: dict[str, int] = field(default_factory=dict)
    buckets: list[dict[str, int]] = field(default_factory=list)  # per hour: {status: n}
    start_ms: int = 0  # the first bucket's hour
    failures: list[dict[str, Any]] = field(default_factory=list)


def _list(values: Sequence[str]) -> list[str] | None:
    return list(values) or None


async def list_workflows(
    source: Source, flt: ListFilter, after: tuple[int, str] | None, limit: int = PAGE_SIZE
) -> Page:
    """One page, newest first, strictly after the keyset ``after`` (created_at, workflow_id)."""
    async with source.connection() as conn, conn.transaction():
        # The NULL filters fold away only in a custom plan (see the query).
        await conn.execute("SET LOCAL plan_cache_mode = force_custom_plan")
        records = await conn.fetch(
            q(conn, "dashboard_list_workflows"),
            _list(flt.statuses),
            _list(flt.names),
            _list(flt.queues),
            _list(flt.versions),
            _list(flt.executors),
            flt.created_from,
            flt.created_to,
            flt.id_prefix or None,
            after[0] if after else None,
            after[1] if after else None,
            limit + 1,
        )
    rows = [record_dict(r) for r in records[:limit]]
    more = len(records) > limit
    last = rows[-1] if rows else None
    return Page(rows, (last["created_at"], last["workflow_id"]) if more and last else None)


async def children(source: Source, workflow_id: str) -> list[dict[str, Any]]:
    """The workflows it started or enqueued."""
    async with source.connection() as conn:
        return [
            record_dict(r) for r in await conn.fetch(q(conn, "dashboard_children"), workflow_id)
        ]


async def events(source: Source, workflow_id: str) -> list[dict[str, Any]]:
    """Its events, values truncated."""
    async with source.connection() as conn:
        rows = await conn.fetch(q(conn, "dashboard_events"), workflow_id, PAYLOAD_CHARS)
    return [record_dict(r) for r in rows]


async def streams(source: Source, workflow_id: str) -> list[dict[str, Any]]:
    """Its streams: entries, closed, the last value (truncated)."""
    async with source.connection() as conn:
        rows = await conn.fetch(q(conn, "dashboard_streams"), workflow_id, PAYLOAD_CHARS)
    return [record_dict(r) for r in rows]


async def queue_position(source: Source, workflow_id: str) -> dict[str, Any] | None:
    """Where an ENQUEUED workflow stands in its queue (None: not ENQUEUED)."""
    async with source.connection() as conn:
        row = await conn.fetchrow(q(conn, "dashboard_queue_position"), workflow_id)
    return record_dict(row) if row is not None else None


async def overview(source: Source, now_ms: int) -> Overview:
    """Counts by status over 1 h and 24 h, hourly starts over 24 h, recent failures."""
    day = now_ms - 24 * 3600_000
    hour = now_ms - 3600_000
    # Chart buckets on clock hours: the current one and the 23 before it.
    start = (now_ms // 3600_000 - 23) * 3600_000
    result = Overview(start_ms=start)
    async with source.connection() as conn:
        for since, into in ((hour, result.counts_1h), (day, result.counts_24h)):
            for r in await conn.fetch(q(conn, "dashboard_status_counts"), since):
                into[r["status"]] = int(r["n"])
        result.buckets = [{} for _ in range(24)]
        for r in await conn.fetch(q(conn, "dashboard_throughput"), start, 3600_000):
            bucket = min(int(r["bucket"]), 23)
            result.buckets[bucket][r["status"]] = int(r["n"])
        result.failures = [
            record_dict(r) for r in await conn.fetch(q(conn, "dashboard_recent_failures"), 10)
        ]
    return result


async def queues(source: Source) -> list[dict[str, Any]]:
    """Per queue with work: ENQUEUED, PENDING, oldest ENQUEUED, partitions."""
    async with source.connection() as conn:
        return [record_dict(r) for r in await conn.fetch(q(conn, "select_queue_depths"))]


async def instances(source: Source) -> list[dict[str, Any]]:
    """The registered runtime instances, with heartbeat age and PENDING counts."""
    async with source.connection() as conn:
        rows = await conn.fetch(q(conn, "dashboard_instances"), source.clock.sql_now_ms())
    return [record_dict(r) for r in rows]


async def schedule_ticks(source: Source) -> dict[str, int]:
    """Each schedule's last started tick (epoch ms)."""
    async with source.connection() as conn:
        rows = await conn.fetch(q(conn, "dashboard_schedule_ticks"))
    return {r["schedule_name"]: int(r["last_tick_ms"]) for r in rows}
