"""Idempotency keys with other inputs (issue 19, item 8).

By default a key reused with other inputs returns the first execution, as in
DBOS; ``SetWorkflowID(..., on_conflict="raise")`` refuses it with
``WorkflowConflictError`` and runs nothing. Checked for a start (finished
and still running), an enqueue from a runtime and from a client.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from dbos_async import DBOS, DBOSClient, Queue, SetWorkflowID, WorkflowConflictError

ran: list[Any] = []
gate: dict[str, asyncio.Event] = {}
keyed = Queue("keyed")


@DBOS.workflow()
async def order(item: dict[str, int]) -> dict[str, int]:
    ran.append(item)
    return item


@DBOS.workflow()
async def held(n: int) -> int:
    ran.append(n)
    await gate["release"].wait()
    return n


@pytest.fixture(autouse=True)
def fresh() -> None:
    ran.clear()
    gate["release"] = asyncio.Event()


async def test_the_default_returns_the_first_execution_whatever_the_inputs(dbos: DBOS) -> None:
    with SetWorkflowID("k"):
        assert await order({"a": 1}) == {"a": 1}
    with SetWorkflowID("k"):
        assert await order({"a": 2}) == {"a": 1}
    assert ran == [{"a": 1}]


async def test_raise_refuses_other_inputs_and_accepts_the_same(dbos: DBOS) -> None:
    with SetWorkflowID("k", on_conflict="raise"):
        assert await order({"a": 1, "b": 2}) == {"a": 1, "b": 2}
    with SetWorkflowID("k", on_conflict="raise"), pytest.raises(WorkflowConflictError) as caught:
        await order({"a": 1, "b": 3})
    assert caught.value.different_inputs and caught.value.workflow_id == "k"
    assert "other inputs" in str(caught.value)
    # The same inputs, in another key order: the same JSON value, a retry.
    with SetWorkflowID("k", on_conflict="raise"):
        assert await order({"b": 2, "a": 1}) == {"a": 1, "b": 2}
    assert ran == [{"a": 1, "b": 2}]


async def test_raise_applies_while_the_first_execution_still_runs(dbos: DBOS) -> None:
    with SetWorkflowID("running", on_conflict="raise"):
        first = await dbos.start_workflow(held, 1)
    with SetWorkflowID("running", on_conflict="raise"), pytest.raises(WorkflowConflictError):
        await dbos.start_workflow(held, 2)
    with SetWorkflowID("running", on_conflict="raise"):
        again = await dbos.start_workflow(held, 1)
    gate["release"].set()
    assert await first.get_result(timeout=10) == await again.get_result(timeout=10) == 1
    assert ran == [1]


async def test_raise_applies_to_enqueues_from_a_runtime_and_a_client(dbos: DBOS) -> None:
    with SetWorkflowID("queued", on_conflict="raise"):
        handle = await keyed.enqueue(order, {"a": 1})
    assert await handle.get_result(timeout=10) == {"a": 1}
    with SetWorkflowID("queued", on_conflict="raise"), pytest.raises(WorkflowConflictError):
        await keyed.enqueue(order, {"a": 2})
    name = order.__dbos_entry__.name  # type: ignore[attr-defined]
    async with DBOSClient(dbos.database_url) as client:
        with SetWorkflowID("queued", on_conflict="raise"), pytest.raises(WorkflowConflictError):
            await client.enqueue({"a": 3}, queue_name="keyed", workflow_name=name)
        with SetWorkflowID("queued", on_conflict="raise"):
            same = await client.enqueue({"a": 1}, queue_name="keyed", workflow_name=name)
        assert await same.get_result(timeout=10) == {"a": 1}
        with SetWorkflowID("queued"):  # the default: the first execution
            await client.enqueue({"a": 4}, queue_name="keyed", workflow_name=name)
    assert ran == [{"a": 1}]


def test_on_conflict_takes_return_or_raise() -> None:
    with pytest.raises(ValueError, match="on_conflict"):
        SetWorkflowID("k", on_conflict="replace")
