"""Queued workflows in ``workflow_status``: enqueue, and the claim that dequeues them.

Each function is one round trip. A claim is two of them in one transaction
that the caller opens (``lock_queue``, then ``claim_queued_workflows``): four
round trips with BEGIN and COMMIT; see ``dbos_async.queue_worker``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from dbos_async.systemdb.pool import Connection, deduplication_checked, record_dict
from dbos_async.systemdb.queries import q


@dataclass(frozen=True, slots=True)
class NewQueued:
    """A row for ``enqueue_workflow``."""

    workflow_id: str
    name: str
    inputs: str
    app_name: str | None
    app_version: str | None
    now_ms: int
    queue_name: str
    partition_key: str | None = None
    deduplication_id: str | None = None
    priority: int = 0
    delay_ms: int | None = None
    timeout_ms: int | None = None
    parent_workflow_id: str | None = None


@dataclass(frozen=True, slots=True)
class Limits:
    """What one claim may admit; None means unlimited."""

    want: int
    concurrency: int | None = None
    worker_concurrency: int | None = None
    limit: int | None = None
    period_ms: int | None = None
    start_timeouts: bool = True


@dataclass(frozen=True, slots=True)
class Claim:
    """The outcome of one claim: the claimed rows, and when to try again."""

    rows: list[dict[str, Any]]
    retry_in_ms: int | None


async def enqueue_workflow(conn: Connection, row: NewQueued) -> tuple[bool, str | None]:
    """Record an ENQUEUED workflow and announce it on ``q:<queue>``. One round trip.

    Returns ``(inserted, existing_name)``: when the ID was taken, ``inserted``
    is False and ``existing_name`` names its function (None if that row
    committed during this statement; read it again).

    Raises:
        QueueDeduplicatedError: the queue holds a live workflow with this deduplication ID.
    """
    with deduplication_checked(row.queue_name, row.deduplication_id):
        record = await conn.fetchrow(
            q("enqueue_workflow"),
            row.workflow_id,
            row.name,
            row.inputs,
            row.app_name,
            row.app_version,
            row.now_ms,
            row.queue_name,
            row.partition_key,
            row.deduplication_id,
            row.priority,
            row.delay_ms,
            row.timeout_ms,
            row.parent_workflow_id,
        )
    assert record is not None
    return bool(record["inserted"]), record["existing_name"]


async def lock_queue(conn: Connection, queue_name: str, partition_key: str | None) -> None:
    """Take the transaction-scoped claim lock of a queue (or partition). One round trip."""
    await conn.execute(q("lock_queue"), queue_name, partition_key)


async def claim_queued_workflows(
    conn: Connection,
    queue_name: str,
    partition_key: str | None,
    executor_id: str,
    app_version: str,
    limits: Limits,
    workflow_names: Sequence[str],
) -> Claim:
    """Claim ENQUEUED workflows within ``limits`` (see the query). One round trip.

    Only workflows named in ``workflow_names`` are claimed. Must run in a
    transaction, after ``lock_queue`` on the same queue.
    """
    records = await conn.fetch(
        q("claim_queued_workflows"),
        queue_name,
        partition_key,
        executor_id,
        app_version,
        limits.want,
        limits.concurrency,
        limits.worker_concurrency,
        limits.limit,
        limits.period_ms,
        limits.start_timeouts,
        list(workflow_names),
    )
    rows = [record_dict(r) for r in records if r["workflow_id"] is not None]
    return Claim(rows, records[0]["retry_in_ms"] if records else None)


async def select_queue_partitions(conn: Connection, queue_name: str) -> list[str]:
    """The partition keys of a queue that hold ENQUEUED workflows. One round trip."""
    return [r[0] for r in await conn.fetch(q("select_queue_partitions"), queue_name)]
