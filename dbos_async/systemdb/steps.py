"""The checkpoint tables: one row per completed durable call.

A call of the workflow's own sequence (branch ``""``) is a row of
``operation_outputs``; a call made in a task the workflow created is a row of
``branch_outputs`` (see ``0006_branches.sql``). Each function makes one round
trip, except that a batch whose rows lost a first-writer race makes a second
one to read the winners' records.
"""

from __future__ import annotations

import operator
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

from dbos_async.context import FencedOff
from dbos_async.systemdb.pool import Connection
from dbos_async.systemdb.queries import q

_BRANCH = operator.attrgetter("branch")

StepKey = tuple[str, int]
"""A durable call's identity within its workflow: (branch, step_id)."""


@dataclass(slots=True)  # not frozen: a frozen __init__ sets each field with object.__setattr__
class StepRecord:
    """A step's checkpoint: exactly one of output/error is meaningful. Never changed once made."""

    workflow_id: str
    step_id: int
    function_name: str
    output: str | None = None
    error: str | None = None
    child_workflow_id: str | None = None
    started_at: int | None = None
    completed_at: int | None = None
    fence: int = 0  # the writer's fencing token (see 0003_failover.sql); not stored
    branch: str = ""  # "" is the workflow's own sequence
    origin: int = 0  # where the branch's top-level ancestor was created (branches only)
    attempts: int | None = None  # runs of a step's body; None for calls without one
    label: str | None = None  # what the call was for, where function_name does not say

    @property
    def key(self) -> StepKey:
        """The call's identity within its workflow."""
        return (self.branch, self.step_id)


def record_from_row(r: object) -> StepRecord:
    """A StepRecord from a checkpoint row (with its ``branch``)."""
    return StepRecord(
        workflow_id=r["workflow_id"],  # type: ignore[index]
        step_id=r["step_id"],  # type: ignore[index]
        function_name=r["function_name"],  # type: ignore[index]
        output=r["output"],  # type: ignore[index]
        error=r["error"],  # type: ignore[index]
        child_workflow_id=r["child_workflow_id"],  # type: ignore[index]
        branch=r["branch"],  # type: ignore[index]
    )


def _columns(rows: Sequence[StepRecord], *, branched: bool) -> tuple[list[object], ...]:
    columns: tuple[list[object], ...] = (
        [r.workflow_id for r in rows],
        [r.step_id for r in rows],
        [r.function_name for r in rows],
        [r.output for r in rows],
        [r.error for r in rows],
        [r.child_workflow_id for r in rows],
        [r.started_at for r in rows],
        [r.completed_at for r in rows],
        [r.fence for r in rows],
    )
    if branched:
        columns += ([r.branch for r in rows], [r.origin for r in rows])
    return (*columns, [r.attempts for r in rows], [r.label for r in rows])


async def insert_steps(
    conn: Connection, rows: Sequence[StepRecord]
) -> list[StepRecord | FencedOff]:
    """Checkpoint ``rows``; returns, per row, the record that won (ours or an earlier one).

    A row whose fence is stale gets a FencedOff instead. One round trip; a
    second only when some row was not written.
    """
    written: set[tuple[str, str, int]] = set()
    if len(rows) == 1:  # the single-row forms; the command tag says whether it wrote
        row = rows[0]
        if row.branch:
            query, args = q(conn, "insert_branch_step_if_absent"), _columns(rows, branched=True)
        else:
            query, args = q(conn, "insert_step_if_absent"), _columns(rows, branched=False)
        if await conn.execute(query, *(c[0] for c in args)) == "INSERT 0 1":
            return [row]
    else:
        if any(map(_BRANCH, rows)):
            query, args = q(conn, "insert_steps"), _columns(rows, branched=True)
        else:
            query, args = q(conn, "insert_own_steps"), _columns(rows, branched=False)
        written = {(r[0], r[1], r[2]) for r in await conn.fetch(query, *args)}
    lost = [r for r in rows if (r.workflow_id, r.branch, r.step_id) not in written]
    if not lost:
        return [*rows]
    found = {
        (r["workflow_id"], r["branch"], r["step_id"]): r
        for r in await conn.fetch(
            q(conn, "select_step_winners"),
            [r.workflow_id for r in lost],
            [r.branch for r in lost],
            [r.step_id for r in lost],
        )
    }

    def outcome(r: StepRecord) -> StepRecord | FencedOff:
        key = (r.workflow_id, r.branch, r.step_id)
        if key in written:
            return r
        row = found[key]
        if row["current_fence"] != r.fence:
            # Another runtime owns the workflow now: even a recorded step must
            # not let this one go on to its next step.
            return FencedOff(r.workflow_id)
        if row["current_status"] != "PENDING":
            return FencedOff(r.workflow_id, "is no longer PENDING (cancelled or deleted)")
        return record_from_row(row)  # an earlier execution recorded it first

    return [outcome(r) for r in rows]


async def insert_step(conn: Connection, row: StepRecord) -> None:
    """Checkpoint one step in the caller's transaction. One round trip.

    Raises:
        asyncpg.UniqueViolationError: the step is already recorded.
        FencedOff: the fence is stale (the caller's transaction must roll back).
    """
    columns = _columns([row], branched=True)
    if await conn.fetchval(q(conn, "insert_step"), *(column[0] for column in columns)) != 1:
        raise FencedOff(row.workflow_id, "was adopted, cancelled or deleted")


async def record_interruptions(
    conn: Connection, workflow_id: str, fence: int, rows: Sequence[StepRecord], error: str, at: int
) -> None:
    """Record ``rows`` as interrupted (``error``), overwriting their outcomes. One round trip."""
    await conn.fetchval(
        q(conn, "record_interruptions"),
        workflow_id,
        fence,
        [r.branch for r in rows],
        [r.step_id for r in rows],
        [r.origin for r in rows],
        [r.function_name for r in rows],
        error,
        at,
    )


async def select_steps_of(
    conn: Connection, workflow_ids: Sequence[str]
) -> dict[str, dict[StepKey, StepRecord]]:
    """The recorded steps of ``workflow_ids``, by workflow and step key. One round trip."""
    found: dict[str, dict[StepKey, StepRecord]] = {wid: {} for wid in workflow_ids}
    for r in await conn.fetch(q(conn, "select_steps_of"), list(workflow_ids)):
        found[r["workflow_id"]][(r["branch"], r["step_id"])] = record_from_row(r)
    return found


STEPS_PAGE = 5000
"""Recorded steps read per round trip when a batch's history is read in pages."""


async def select_steps_paged(
    conn: Connection, workflow_ids: Sequence[str], page: int | None = None
) -> AsyncIterator[tuple[str, dict[StepKey, StepRecord]]]:
    """The recorded steps of ``workflow_ids``, one workflow's history at a time.

    Rows are read ``page`` at a time, so the caller can start each workflow
    as soon as its history is complete; one round trip when all of them fit
    in a page. Workflows without any recorded step are not yielded.
    """
    page = page or STEPS_PAGE
    after: tuple[str | None, str | None, int | None] = (None, None, None)
    current: str | None = None
    steps: dict[StepKey, StepRecord] = {}
    ids = list(workflow_ids)
    while True:
        rows = await conn.fetch(q(conn, "select_steps_page"), ids, *after, page)
        for r in rows:
            if r["workflow_id"] != current:
                if current is not None:
                    yield current, steps
                current, steps = r["workflow_id"], {}
            steps[(r["branch"], r["step_id"])] = record_from_row(r)
        if len(rows) < page:
            break
        last = rows[-1]
        after = (last["workflow_id"], last["branch"], last["step_id"])
    if current is not None:
        yield current, steps


async def select_step(
    conn: Connection, workflow_id: str, branch: str, step_id: int
) -> StepRecord | None:
    """One recorded step, or None. One round trip."""
    row = await conn.fetchrow(q(conn, "select_step"), workflow_id, branch, step_id)
    return record_from_row(row) if row is not None else None
