"""Statements of the management API (``sql/queries/management.sql``).

Listing, the step history, fork and delete. Each function is one round trip.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, LiteralString

from dbos_async.systemdb.pool import Connection, record_dict
from dbos_async.systemdb.queries import q


@dataclass(frozen=True, slots=True)
class WorkflowFilter:
    """The parameters of ``list_workflows``: a None filter matches every workflow."""

    workflow_ids: Sequence[str] | None = None
    statuses: Sequence[str] | None = None
    names: Sequence[str] | None = None
    queue_names: Sequence[str] | None = None
    start_time: int | None = None
    end_time: int | None = None
    app_versions: Sequence[str] | None = None
    executor_ids: Sequence[str] | None = None
    excluded_names: Sequence[str] | None = None
    queued_only: bool = False
    load_input: bool = True
    load_output: bool = True
    limit: int | None = None
    offset: int | None = None
    sort_desc: bool = False


def list_workflows_statement(
    conn: Connection, f: WorkflowFilter
) -> tuple[LiteralString, tuple[Any, ...]]:
    """The statement and arguments ``list_workflows`` sends (the EXPLAIN test reuses them)."""
    query = q(conn, "list_workflows_desc" if f.sort_desc else "list_workflows")
    args = (
        _array(f.workflow_ids),
        _array(f.statuses),
        _array(f.names),
        _array(f.queue_names),
        f.start_time,
        f.end_time,
        _array(f.app_versions),
        _array(f.executor_ids),
        f.queued_only,
        f.load_input,
        f.load_output,
        f.limit,
        f.offset,
        _array(f.excluded_names),
    )
    return query, args


def _array(values: Sequence[str] | None) -> list[str] | None:
    return None if values is None else list(values)


async def list_workflows(conn: Connection, f: WorkflowFilter) -> list[dict[str, Any]]:
    """The ``workflow_status`` rows matching ``f`` (payloads only if asked). One round trip."""
    query, args = list_workflows_statement(conn, f)
    return [record_dict(r) for r in await conn.fetch(query, *args)]


async def list_workflow_steps(conn: Connection, workflow_id: str) -> list[dict[str, Any]] | None:
    """The recorded steps of a workflow in step order, or None if it does not exist.

    One round trip.
    """
    rows = await conn.fetch(q(conn, "list_workflow_steps"), workflow_id)
    if not rows:
        return None
    return [record_dict(r) for r in rows if r["step_id"] is not None]


@dataclass(frozen=True, slots=True)
class Fork:
    """A row for ``fork_workflow``."""

    original_id: str
    new_id: str
    start_step: int
    executor_id: str | None  # None: enqueue on ``queue_name`` instead
    app_version: str | None  # None: the original's
    queue_name: str
    now_ms: int
    instance: str | None = None  # the runtime instance that runs it, with executor_id


async def fork_workflow(conn: Connection, fork: Fork) -> dict[str, Any] | None:
    """Record the fork (see the query); None if the original does not exist. One round trip.

    The row has ``new_id`` (None if ``fork.new_id`` was taken: nothing was
    written), ``name``, ``inputs``, ``taken_name`` and ``copied_steps``.
    """
    row = await conn.fetchrow(
        q(conn, "fork_workflow"),
        fork.original_id,
        fork.new_id,
        fork.start_step,
        fork.executor_id,
        fork.app_version,
        fork.queue_name,
        fork.now_ms,
        fork.instance,
    )
    return None if row is None else record_dict(row)


async def delete_workflow(conn: Connection, workflow_id: str, with_children: bool) -> list[str]:
    """Delete a workflow (and its descendants) with everything it recorded.

    Returns the deleted IDs, empty if it did not exist. One round trip.
    """
    rows = await conn.fetch(q(conn, "delete_workflow"), workflow_id, with_children)
    return [r["workflow_id"] for r in rows]
