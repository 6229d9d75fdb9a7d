"""Statements of the version registry (``sql/queries/versions.sql``). One round trip each."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from dbos_async.systemdb.pool import Connection, record_dict
from dbos_async.systemdb.queries import q


async def list_application_versions(
    conn: Connection, sql_now_ms: int | None = None
) -> list[dict[str, Any]]:
    """Every registered version, or one named by waiting work, with its counts; newest first."""
    rows = await conn.fetch(q(conn, "list_application_versions"), sql_now_ms)
    return [record_dict(r) for r in rows]


async def set_latest_version(conn: Connection, version: str, sql_now_ms: int | None = None) -> bool:
    """Make ``version`` the latest; False if it was never registered."""
    return await conn.fetchval(q(conn, "set_latest_version"), version, sql_now_ms) is not None


async def count_unrunnable(
    conn: Connection, version: str, names: Sequence[str]
) -> list[tuple[str, int]]:
    """(name, count) of the waiting workflows of ``version`` whose function is not in ``names``."""
    rows = await conn.fetch(q(conn, "count_unrunnable"), version, list(names))
    return [(r["name"], r["n"]) for r in rows]


async def select_known_versions(conn: Connection) -> list[str]:
    """The registered versions, newest first."""
    return [r[0] for r in await conn.fetch(q(conn, "select_known_versions"))]


async def adopt_workflows(
    conn: Connection,
    from_version: str,
    to_version: str,
    workflow_ids: Sequence[str] | None,
    now_ms: int,
) -> list[tuple[str, str]]:
    """Move the PENDING/ENQUEUED workflows of one version to another; returns (ID, status) pairs."""
    rows = await conn.fetch(
        q(conn, "adopt_workflows"),
        from_version,
        to_version,
        list(workflow_ids) if workflow_ids is not None else None,
        now_ms,
    )
    return [(r["workflow_id"], r["status"]) for r in rows]
