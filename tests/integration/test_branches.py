"""Concurrent branches inside a workflow replay exactly, whatever the timing."""

from __future__ import annotations

import asyncio

import asyncpg

from dbos_async import DBOS, SetWorkflowID

delays: dict[str, float] = {}
ran: list[str] = []


async def _pause(key: str) -> None:
    await asyncio.sleep(delays.get(key, 0.0))


@DBOS.step()
async def a1() -> str:
    await _pause("a1")
    ran.append("a1")
    return "a1"


@DBOS.step()
async def a2() -> str:
    ran.append("a2")
    return "a2"


@DBOS.step()
async def b1() -> str:
    await _pause("b1")
    ran.append("b1")
    return "b1"


@DBOS.step()
async def b2() -> str:
    ran.append("b2")
    return "b2"


async def branch_a() -> list[str]:
    return [await a1(), await a2()]


async def branch_b() -> list[str]:
    return [await b1(), await b2()]


@DBOS.workflow()
async def two_branches() -> list[list[str]]:
    return list(await asyncio.gather(branch_a(), branch_b()))


@DBOS.step()
async def shared(branch: str, i: int) -> str:
    await _pause(f"{branch}{i}")
    ran.append(f"{branch}{i}")
    return f"{branch}{i}"


async def counting(branch: str) -> list[str]:
    return [await shared(branch, i) for i in range(3)]


@DBOS.workflow()
async def shared_step_branches() -> list[list[str]]:
    results = list(await asyncio.gather(counting("a"), counting("b")))
    await DBOS.set_event("branched", True)
    await DBOS.recv("go", timeout_seconds=30)
    return results


async def test_fork_of_the_issue_repro_replays_each_branch_its_own_steps(
    dbos: DBOS, conn: asyncpg.Connection
) -> None:
    delays.update(a1=0.05, b1=0.01)
    with SetWorkflowID("repro"):
        assert await two_branches() == [["a1", "a2"], ["b1", "b2"]]
    # Replay with the opposite timing: recorded steps return at once.
    delays.update(a1=0.0, b1=0.05)
    ran.clear()
    handle = await DBOS.fork_workflow("repro", 4)
    assert await handle.get_result(timeout=10) == [["a1", "a2"], ["b1", "b2"]]
    assert ran == []  # every step was recorded: none ran again
    steps = await DBOS.list_workflow_steps("repro")
    assert sorted((s.branch, s.step_id, s.name.rsplit(".", 1)[-1]) for s in steps) == [
        ("0", 0, "a1"),
        ("0", 1, "a2"),
        ("1", 0, "b1"),
        ("1", 1, "b2"),
    ]


async def test_cancel_and_resume_with_a_shared_step_function(dbos: DBOS) -> None:
    # First run: branch a is slow, so b's steps are recorded first.
    delays.clear()
    delays.update(a0=0.03, a1=0.03, a2=0.03)
    ran.clear()
    with SetWorkflowID("shared"):
        handle = await DBOS.start_workflow(shared_step_branches)
    assert await DBOS.get_event("shared", "branched", timeout_seconds=10) is True
    await DBOS.cancel_workflow("shared")
    # Replay with the opposite timing: recorded steps return at once.
    delays.clear()
    delays.update(b0=0.03, b1=0.03, b2=0.03)
    ran.clear()
    handle = await DBOS.resume_workflow("shared")
    await DBOS.send("shared", "go", topic="go")
    assert await handle.get_result(timeout=10) == [["a0", "a1", "a2"], ["b0", "b1", "b2"]]
    assert ran == []
