"""The ``messages`` and ``workflow_events`` tables: send/recv and events.

Every function is one round trip. Writes made from a workflow carry that
workflow's step checkpoint (``step``: its key, fence and time) in the same
statement, so they happen exactly once.
"""

from __future__ import annotations

import asyncpg

from dbos_async.systemdb.pool import Connection
from dbos_async.systemdb.queries import q
from dbos_async.systemdb.steps import StepRecord


async def send_message_from_workflow(
    conn: Connection,
    destination_id: str,
    topic: str,
    payload: str,
    step: StepRecord,
    notify: bool,
) -> bool:
    """Send as a workflow step; False if the destination does not exist."""
    row = await conn.fetchrow(
        q(conn, "send_message_from_workflow"),
        destination_id,
        topic,
        payload,
        step.completed_at,
        step.workflow_id,
        step.step_id,
        step.fence,
        notify,
        step.branch,
        step.origin,
    )
    assert row is not None
    return bool(row["destination_exists"])


async def send_message(
    conn: Connection,
    destination_id: str,
    topic: str,
    payload: str,
    now_ms: int,
    idempotency_key: str | None,
    notify: bool,
) -> tuple[bool, bool | None]:
    """Send from outside a workflow.

    Returns whether the destination exists and, when the idempotency key was
    used before, whether that send had the same topic and payload (else None).
    """
    row = await conn.fetchrow(
        q(conn, "send_message"), destination_id, topic, payload, now_ms, idempotency_key, notify
    )
    assert row is not None
    return bool(row["destination_exists"]), row["same"]


class AlreadyRecorded(Exception):
    """The step was recorded by an earlier execution (or an earlier try of this statement)."""


async def receive_message(conn: Connection, topic: str, step: StepRecord) -> str | None:
    """Consume the oldest waiting message and record it as the step; None if none waits.

    Raises:
        AlreadyRecorded: the step exists; nothing was consumed.
    """
    try:
        payload: str | None = await conn.fetchval(
            q(conn, "receive_message"),
            step.workflow_id,
            topic,
            step.step_id,
            step.completed_at,
            step.fence,
            step.branch,
            step.origin,
        )
    except asyncpg.UniqueViolationError as exc:
        raise AlreadyRecorded from exc
    return payload


async def set_event(conn: Connection, key: str, value: str, step: StepRecord) -> None:
    """Set an event as a workflow step (nothing if the step was recorded)."""
    await conn.fetchval(
        q(conn, "set_event"),
        step.workflow_id,
        step.step_id,
        key,
        value,
        step.completed_at,
        step.fence,
        step.branch,
        step.origin,
    )


async def select_event(conn: Connection, workflow_id: str, key: str) -> str | None:
    """The encoded value of an event, or None if it is not set."""
    value: str | None = await conn.fetchval(q(conn, "select_event"), workflow_id, key)
    return value


async def record_event(
    conn: Connection, workflow_id: str, key: str, step: StepRecord
) -> tuple[str | None, bool]:
    """Read an event and record it as ``step`` of the reading workflow.

    Returns the encoded value (None: not set) and whether this call recorded it.
    """
    row = await conn.fetchrow(
        q(conn, "record_event"),
        workflow_id,
        key,
        step.workflow_id,
        step.step_id,
        step.completed_at,
        step.fence,
        step.branch,
        step.origin,
    )
    assert row is not None
    return row["value"], bool(row["recorded"])


async def select_events(conn: Connection, workflow_id: str) -> list[tuple[str, str]]:
    """Every event of a workflow as (key, encoded value)."""
    return [(r["key"], r["value"]) for r in await conn.fetch(q(conn, "select_events"), workflow_id)]
