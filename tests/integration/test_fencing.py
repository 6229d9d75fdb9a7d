"""Strict fencing: a stale owner's checkpoint that races an adoption.

A step checkpoint is an ``INSERT … SELECT`` joined on the workflow's fence,
and an adoption is an ``UPDATE`` that bumps it. A checkpoint that reads the
row before the adoption commits still writes (first writer wins); one that
reads it after writes nothing and fences its writer off. Either way the
adopter replays the history that was committed when it read it, and a step
recorded by the stale owner is never run again. The adoption here is held
open in a transaction the test controls, so the checkpoint really does run
while the adoption is in flight.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import AsyncIterator

import pytest

from dbos_async import DBOS, SetWorkflowID, registry
from dbos_async.clock import now_ms
from dbos_async.context import current_workflow
from dbos_async.recovery import run_claimed
from dbos_async.systemdb import executors as executors_table
from dbos_async.systemdb.pool import SystemConnection, connect

# The ledger the step bodies write: (step, executor) per run of a body.
ran: list[tuple[str, str]] = []
gate: dict[str, asyncio.Event] = {}


@pytest.fixture(autouse=True)
async def _reset() -> AsyncIterator[None]:
    ran.clear()
    for name in ("first recorded", "second step", "checkpointed", "third step"):
        gate[name] = asyncio.Event()
    yield


def _run(step: str) -> str:
    ctx = current_workflow.get()
    assert ctx is not None
    ran.append((step, ctx.runtime.executor_id))
    return f"{step}@{ctx.runtime.executor_id}"


@DBOS.step()
async def first() -> str:
    return _run("first")


@DBOS.step()
async def second() -> str:
    return _run("second")


@DBOS.step()
async def third() -> str:
    return _run("third")


@DBOS.workflow()
async def three() -> list[str]:
    out = [await first()]
    gate["first recorded"].set()
    await gate["second step"].wait()
    out.append(await second())
    gate["checkpointed"].set()  # second's checkpoint was written (not fenced off)
    await gate["third step"].wait()
    out.append(await third())
    return out


@pytest.fixture
async def system(db_url: str) -> AsyncIterator[SystemConnection]:
    conn = await connect(db_url, schema="dbos_async", search_path="dbos_async")
    yield conn
    await conn.close()


@pytest.mark.parametrize("checkpoint", ["before the adoption commits", "after it commits"])
async def test_a_stale_owners_checkpoint_racing_an_adoption_keeps_one_history(
    db_url: str, system: SystemConnection, checkpoint: str
) -> None:
    async with (
        # The stale owner: it heartbeats at launch, then looks dead.
        DBOS(
            database_url=db_url, app_version="v", executor_id="stale", lease_seconds=math.inf
        ) as stale,
        DBOS(database_url=db_url, app_version="v", executor_id="adopter") as adopter,
    ):
        with SetWorkflowID("raced"):
            await stale.start_workflow(three)
        await system.execute(
            "UPDATE instances SET heartbeat_at = 0 WHERE instance_id = $1",
            stale._runtime.instance_id,
        )
        await gate["first recorded"].wait()  # the stale owner is between its steps
        adoption = system.transaction()
        await adoption.start()
        rows = await executors_table.claim_orphaned_workflows(
            system,
            adopter._runtime.instance,
            only_executor=None,
            lease_ms=1000,
            suspects=[],
            now_ms=now_ms(),
            limit=10,
            names=[e.name for e in registry.workflows()],
        )
        assert [r["workflow_id"] for r in rows] == ["raced"]
        if checkpoint == "before the adoption commits":
            gate["second step"].set()
            await gate["checkpointed"].wait()  # its INSERT read the old fence: written
            await adoption.commit()
        else:
            await adoption.commit()
            gate["second step"].set()  # its INSERT reads the new fence: fenced off
        gate["third step"].set()
        # The adopter replays whatever history was committed when it read it.
        await run_claimed(adopter._runtime, system, rows)
        result = await (await adopter.retrieve_workflow("raced")).get_result(timeout=20)
    recorded = await system.fetch(
        "SELECT output FROM operation_outputs WHERE workflow_id = 'raced' ORDER BY step_id"
    )
    # One history: what the adopter returned is what was recorded.
    assert result == [json.loads(r[0]) for r in recorded]
    writer = "stale" if checkpoint == "before the adoption commits" else "adopter"
    assert result == ["first@stale", f"second@{writer}", "third@adopter"]
    # No step recorded before the adopter read the history ran again.
    assert ("first", "adopter") not in ran
    if writer == "stale":
        assert ("second", "adopter") not in ran
    assert (
        await system.fetchval("SELECT status FROM workflow_status WHERE workflow_id = 'raced'")
        == "SUCCESS"
    )
