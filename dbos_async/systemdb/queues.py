"""Queued workflows in ``workflow_status``: enqueue, and the claim that dequeues them.

Each function is one round trip, except that a multi-row enqueue makes a
second one when some IDs were taken (to name their functions), or when a
deduplication ID was live (the rows then go one by one). A claim is two of them in one transaction
that the caller opens (``lock_queue``, then ``claim_queued_workflows``): four
round trips with BEGIN and COMMIT; see ``dbos_async.queue_worker``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from dbos_async.errors import QueueDeduplicatedError
from dbos_async.systemdb.pool import (
    Connection,
    deduplication_checked,
    is_deduplication_violation,
    record_dict,
)
from dbos_async.systemdb.queries import q


@dataclass(frozen=True, slots=True)
class NewQueued:
    """A row for ``enqueue_workflows``."""

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
    deadline_epoch_ms: int | None = None  # inherited from the enqueuing workflow
    sql_now_ms: int | None = None  # a virtual clock's now (None: the database's clock)
    trace_context: str | None = None  # the enqueuer's, as an observer captured it (0011)


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


Enqueued = str | None | QueueDeduplicatedError
"""Per enqueued row: None (enqueued now), the function name that holds its ID
(nothing enqueued), or the error to raise."""


async def enqueue_workflows(conn: Connection, rows: Sequence[NewQueued]) -> list[Enqueued]:
    """Record ENQUEUED workflows and announce their queues on ``q:<queue>``.

    One round trip for a single row or a batch without taken IDs; see the
    module docstring for the rest.
    """
    if len(rows) == 1:
        return [await _enqueue_one(conn, rows[0])]
    try:
        inserted = {
            r[0]
            for r in await conn.fetch(
                # One now for the batch: its rows come from one runtime, on one clock.
                q(conn, "enqueue_workflows"),
                *_enqueue_columns(rows),
                rows[-1].sql_now_ms,
                _trace_contexts(rows),
            )
        }
    except Exception as exc:
        if not is_deduplication_violation(exc):
            raise
        # The statement does not say which row collided: take them one by one.
        return [await _enqueue_one(conn, row) for row in rows]
    taken = [r.workflow_id for r in rows if r.workflow_id not in inserted]
    names: dict[str, str] = {}
    if taken:
        names = {
            r["workflow_id"]: r["name"]
            for r in await conn.fetch(q(conn, "select_workflow_names"), taken)
        }
    seen: set[str] = set()
    results: list[Enqueued] = []
    for r in rows:  # within a batch only the first row with an ID can have inserted it
        first = r.workflow_id in inserted and r.workflow_id not in seen
        seen.add(r.workflow_id)
        results.append(None if first else names.get(r.workflow_id, r.name))
    return results


async def _enqueue_one(conn: Connection, row: NewQueued) -> Enqueued:
    try:
        with deduplication_checked(row.queue_name, row.deduplication_id):
            record = await conn.fetchrow(
                q(conn, "enqueue_workflow"),
                *(c[0] for c in _enqueue_columns([row])),
                row.sql_now_ms,
                row.trace_context,
            )
    except QueueDeduplicatedError as exc:
        return exc
    assert record is not None
    if record["inserted"]:
        return None
    existing: str | None = record["existing_name"]
    if existing is None:  # the row committed during the statement: read it now
        found = await conn.fetch(q(conn, "select_workflow_names"), [row.workflow_id])
        existing = found[0]["name"] if found else None
    return existing or row.name


def _enqueue_columns(rows: Sequence[NewQueued]) -> tuple[list[Any], ...]:
    return (
        [r.workflow_id for r in rows],
        [r.name for r in rows],
        [r.inputs for r in rows],
        [r.app_name for r in rows],
        [r.app_version for r in rows],
        [r.now_ms for r in rows],
        [r.queue_name for r in rows],
        [r.partition_key for r in rows],
        [r.deduplication_id for r in rows],
        [r.priority for r in rows],
        [r.delay_ms for r in rows],
        [r.timeout_ms for r in rows],
        [r.parent_workflow_id for r in rows],
        [r.deadline_epoch_ms for r in rows],
    )


def _trace_contexts(rows: Sequence[NewQueued]) -> list[str | None]:
    return [r.trace_context for r in rows]


async def lock_queue(conn: Connection, queue_name: str, partition_key: str | None) -> None:
    """Take the transaction-scoped claim lock of a queue (or partition). One round trip."""
    await conn.execute(q(conn, "lock_queue"), queue_name, partition_key)


async def claim_queued_workflows(
    conn: Connection,
    queue_name: str,
    partition_key: str | None,
    executor_id: str,
    app_version: str,
    limits: Limits,
    workflow_names: Sequence[str],
    instance: str,
    now_ms: int,
    sql_now_ms: int | None = None,
) -> Claim:
    """Claim ENQUEUED workflows within ``limits`` (see the query). One round trip.

    Only workflows named in ``workflow_names`` are claimed, for runtime
    ``instance`` of ``executor_id``; deadlines start at ``now_ms`` (this host's
    clock, which enforces them). Must run in a
    transaction, after ``lock_queue`` on the same queue.
    """
    records = await conn.fetch(
        q(conn, "claim_queued_workflows"),
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
        instance,
        now_ms,
        sql_now_ms,
    )
    rows = [record_dict(r) for r in records if r["workflow_id"] is not None]
    return Claim(rows, records[0]["retry_in_ms"] if records else None)


async def select_queue_partitions(conn: Connection, queue_name: str) -> list[str]:
    """The partition keys of a queue that hold ENQUEUED workflows. One round trip."""
    return [r[0] for r in await conn.fetch(q(conn, "select_queue_partitions"), queue_name)]
