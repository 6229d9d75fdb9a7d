"""Fleet failover with real processes: a dead executor's workflows are adopted, a
paused one is fenced off when it wakes up."""

from __future__ import annotations

import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import anyio
import asyncpg
import pytest
from child import Child

from dbos_async import DBOS

APP = Path(__file__).with_name("fleet_app.py")


@pytest.fixture
async def fleet(
    db_url: str, conn: asyncpg.Connection
) -> AsyncIterator[Callable[..., Awaitable[Child]]]:
    await conn.execute(
        "CREATE TABLE public.ledger (workflow_id text, entry text, executor text, "
        "at timestamptz DEFAULT clock_timestamp())"
    )
    children: list[Child] = []

    async def start(executor: str, mode: str, **env: str) -> Child:
        child = await Child.start(APP, executor, db_url, mode, env=env)
        children.append(child)
        return child

    yield start
    for child in children:
        if child.proc.returncode is None:
            child.proc.send_signal(signal.SIGCONT)
        await child.kill()


async def _ledger(conn: asyncpg.Connection, workflow_id: str) -> list[tuple[str, str]]:
    rows = await conn.fetch(
        "SELECT entry, executor FROM public.ledger WHERE workflow_id = $1 ORDER BY at",
        workflow_id,
    )
    return [(r[0], r[1]) for r in rows]


async def test_a_killed_executors_workflows_are_adopted_once_and_finish(
    db_url: str, conn: asyncpg.Connection, fleet: Callable[..., Awaitable[Child]]
) -> None:
    a = await fleet("a", "start:6", HANG="1")
    await a.wait_for("ready")
    await a.kill()
    await fleet("b", "serve")
    await fleet("c", "serve")  # two candidates: each workflow must go to one of them
    async with DBOS(database_url=db_url, app_version="observer", executor_id="obs") as obs:
        results = [
            await (await obs.retrieve_workflow(f"fw-{i}")).get_result(timeout=30) for i in range(6)
        ]
    assert sorted(r.split(":")[1] for r in results) == [str(i) for i in range(6)]
    for i in range(6):
        log = await _ledger(conn, f"fw-{i}")
        adopter = results[i].split(":")[0]
        assert adopter in ("b", "c")
        # Completed steps ran once; the step that was interrupted ran again on the adopter.
        assert log == [
            ("s1", "a"),
            ("s2:start", "a"),
            ("s2:start", adopter),
            ("s2:done", adopter),
            ("s3", adopter),
        ], log
    statuses = await conn.fetch("SELECT DISTINCT status, fence FROM workflow_status")
    assert [(r[0], r[1]) for r in statuses] == [("SUCCESS", 1)]


async def test_a_paused_owner_cannot_write_after_its_workflow_was_adopted(
    db_url: str, conn: asyncpg.Connection, fleet: Callable[..., Awaitable[Child]]
) -> None:
    a = await fleet("a", "start:1", SLOW="1")
    await a.wait_for("ready")
    a.proc.send_signal(signal.SIGSTOP)
    # Cut its listener too, so nothing tells it about the adoption: only the
    # fence in its checkpoint statement can stop it.
    await conn.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        "WHERE application_name = 'dbos_async listener a' AND datname = current_database()"
    )
    await fleet("b", "serve")
    async with DBOS(database_url=db_url, app_version="observer", executor_id="obs") as obs:
        handle = await obs.retrieve_workflow("fw-0")
        assert await handle.get_result(timeout=30) == "b:0"
    a.proc.send_signal(signal.SIGCONT)
    line = await a.wait_for("log workflow fw-0 was adopted")
    assert "stopped here" in line
    assert await _ledger(conn, "fw-0") == [
        ("s1", "a"),
        ("s2:start", "a"),
        ("s2:start", "b"),
        ("s2:done", "b"),
        ("s3", "b"),
        ("s2:done", "a"),  # a finished its step body after waking up...
    ]
    # ...but its checkpoint was refused: the recorded outcome is b's, and a went no further.
    outputs = await conn.fetch(
        "SELECT step_id, output FROM operation_outputs WHERE workflow_id = 'fw-0' ORDER BY 1"
    )
    assert [(r[0], r[1]) for r in outputs] == [(0, "0"), (1, '"b:0"'), (2, '"b:0"')]


async def test_a_host_whose_clock_runs_ahead_adopts_no_live_workflow(
    conn: asyncpg.Connection, fleet: Callable[..., Awaitable[Child]]
) -> None:
    a = await fleet("a", "start:1", HANG="1", LEASE="2")
    await a.wait_for("ready")
    b = await fleet("b", "serve", SKEW="10", LEASE="2")  # its clock is 10 s ahead
    await b.wait_for("up")
    # b looks for orphans after each heartbeat (every lease/3): let it do so a few times.
    beats: set[object] = set()
    with anyio.fail_after(10):
        while len(beats) < 4:  # the heartbeats are another process's rows: poll them
            beats.add(
                await conn.fetchval("SELECT heartbeat_at FROM executors WHERE executor_id = 'b'")
            )
            await anyio.sleep(0.05)
    owner = await conn.fetchrow("SELECT executor_id, fence FROM workflow_status")
    assert (owner["executor_id"], owner["fence"]) == ("a", 0)
    assert await _ledger(conn, "fw-0") == [("s1", "a"), ("s2:start", "a")]
