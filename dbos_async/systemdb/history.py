"""Statements of workflow export and import (``sql/queries/history.sql``).

Each function is one round trip. The rows travel as column arrays
(``unnest``), so an import of any size is one statement, and so one
transaction: all of it is written or none.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from dbos_async.systemdb.pool import Connection, record_dict
from dbos_async.systemdb.queries import q

_LISTS = ("calls", "events", "stream_entries", "received_messages")


async def select_histories(
    conn: Connection, workflow_ids: Sequence[str], with_children: bool
) -> list[dict[str, Any]]:
    """The rows of these workflows (and their descendants), each with its recorded lists.

    A row is the ``workflow_status`` columns of one workflow plus ``calls``,
    ``events``, ``stream_entries`` and ``received_messages``, lists of dicts.
    Missing IDs have no row. One round trip.
    """
    rows = await conn.fetch(q(conn, "select_histories"), list(workflow_ids), with_children)
    result = []
    for record in rows:
        row = record_dict(record)
        for name in _LISTS:
            row[name] = orjson.loads(row[name])
        result.append(row)
    return result


@dataclass(slots=True)
class HistoryColumns:
    """The rows of an import, one list per column (the parameters of ``insert_histories``)."""

    workflows: tuple[list[Any], ...]  # the 23 columns of the statement's $1..$23
    calls: tuple[list[Any], ...]  # 12: $24..$35
    events: tuple[list[Any], ...]  # 4: $36..$39
    stream_entries: tuple[list[Any], ...]  # 6: $40..$45
    messages: tuple[list[Any], ...]  # 6: $46..$51


_WIDTHS = (23, 12, 4, 6, 6)


async def insert_histories(
    conn: Connection, columns: HistoryColumns
) -> tuple[list[str], list[str]]:
    """Write the rows unless a workflow ID is taken. One round trip.

    Returns (imported IDs, taken IDs): exactly one of them is empty, unless
    there was nothing to import.
    """
    groups = (
        columns.workflows,
        columns.calls,
        columns.events,
        columns.stream_entries,
        columns.messages,
    )
    assert tuple(map(len, groups)) == _WIDTHS, "one list per column of the statement"
    args = [column for group in groups for column in group]
    rows = await conn.fetch(q(conn, "insert_histories"), *args)
    imported = [r["workflow_id"] for r in rows if not r["taken"]]
    taken = [r["workflow_id"] for r in rows if r["taken"]]
    return imported, taken
