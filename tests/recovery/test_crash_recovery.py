"""Crash recovery: SIGKILL a real process mid-workflow, relaunch it, check the ledger."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import anyio
import asyncpg
import pytest
from child import Child

APP = Path(__file__).with_name("app.py")
Run = Callable[..., Awaitable[Child]]


@pytest.fixture
async def run(db_url: str) -> AsyncIterator[Callable[..., Awaitable[Child]]]:
    children: list[Child] = []

    async def start(mode: str, version: str = "v1", **env: str) -> Child:
        child = await Child.start(APP, mode, db_url, version, env=env)
        children.append(child)
        return child

    yield start
    for child in children:
        await child.kill()


async def until(condition: Callable[[], Awaitable[bool]], what: str) -> None:
    """Poll the database for a state no process announces (bounded, short)."""
    with anyio.fail_after(10):
        while not await condition():  # noqa: ASYNC110 - the state is in another process's rows
            await asyncio.sleep(0.01)


@pytest.fixture
async def ledger(conn: asyncpg.Connection) -> asyncpg.Connection:
    await conn.execute(
        "CREATE TABLE public.ledger "
        "(workflow_id text, entry text, at timestamptz DEFAULT clock_timestamp())"
    )
    return conn


async def entries(conn: asyncpg.Connection, workflow_id: str) -> list[str]:
    rows = await conn.fetch(
        "SELECT entry FROM public.ledger WHERE workflow_id = $1 ORDER BY at", workflow_id
    )
    return [r[0] for r in rows]


async def status_of(conn: asyncpg.Connection, workflow_id: str) -> str | None:
    return await conn.fetchval(
        "SELECT status FROM workflow_status WHERE workflow_id = $1", workflow_id
    )


async def test_completed_step_never_reruns_half_done_step_does(
    run: Run, ledger: asyncpg.Connection
) -> None:
    first = await run("start:two_steps", HANG_IN_TWO="1")
    await first.wait_for("in-two")
    await first.kill()
    assert await entries(ledger, "wf-two_steps") == ["one", "two:start"]
    assert await status_of(ledger, "wf-two_steps") == "PENDING"

    second = await run("await:wf-two_steps")
    assert await second.wait_for("result") == "result 60"
    assert await second.finish() == 0
    assert await entries(ledger, "wf-two_steps") == ["one", "two:start", "two:start", "two:done"]
    assert await status_of(ledger, "wf-two_steps") == "SUCCESS"


async def test_sleeping_workflow_wakes_on_its_original_schedule(
    run: Run, ledger: asyncpg.Connection
) -> None:
    first = await run("start:sleeper")
    await first.wait_for("sleeping")
    # The wake-up time is recorded before the sleep blocks: wait for that row.
    await until(
        lambda: ledger.fetchval(
            "SELECT count(*) = 1 FROM operation_outputs WHERE function_name = 'DBOS.sleep'"
        ),
        "the sleep's checkpoint",
    )
    await first.kill()
    before = await ledger.fetchval(
        "SELECT extract(epoch FROM at) FROM public.ledger WHERE entry = 'before'"
    )
    await asyncio.sleep(1.0)  # the process stays dead for a second of its 3 s sleep
    relaunched_at = time.time()
    second = await run("await:wf-sleeper")
    await second.wait_for("result")
    after = await ledger.fetchval(
        "SELECT extract(epoch FROM at) FROM public.ledger WHERE entry = 'after'"
    )
    assert float(after) - float(before) >= 3.0  # never early
    assert float(after) < relaunched_at + 3.0 - 0.5  # the original schedule, not a fresh 3 s
    assert await entries(ledger, "wf-sleeper") == ["before", "after"]


async def test_another_app_version_does_not_recover_it(
    run: Run, ledger: asyncpg.Connection
) -> None:
    first = await run("start:two_steps", HANG_IN_TWO="1")
    await first.wait_for("in-two")
    await first.kill()
    other = await run("status:wf-two_steps", version="v2")
    assert await other.wait_for("status") == "status PENDING"
    assert await other.finish() == 0
    assert await entries(ledger, "wf-two_steps") == ["one", "two:start"]
    same = await run("await:wf-two_steps")
    assert await same.wait_for("result") == "result 60"


async def test_a_poison_workflow_stops_after_max_recovery_attempts(
    run: Run, ledger: asyncpg.Connection
) -> None:
    first = await run("start:poison")
    assert await first.finish() == -signal.SIGKILL  # it killed itself in its step
    second = await run("await:wf-poison")  # recovery attempt 1: dies again
    assert await second.finish() == -signal.SIGKILL
    third = await run("await:wf-poison")  # attempt 2 exceeds max_recovery_attempts=1
    assert await third.wait_for("error") == "error MaxRecoveryAttemptsExceededError"
    assert await status_of(ledger, "wf-poison") == "MAX_RECOVERY_ATTEMPTS_EXCEEDED"
    assert await entries(ledger, "wf-poison") == ["suicide", "suicide"]


async def test_gathered_steps_replay_deterministically(
    run: Run, ledger: asyncpg.Connection
) -> None:
    first = await run("start:fan_out", HANG_ODD="1")
    await first.wait_for("started")
    deadline = time.monotonic() + 10
    while (
        await ledger.fetchval(
            "SELECT count(*) FROM operation_outputs WHERE workflow_id = 'wf-fan_out'"
        )
        < 3
    ):  # the even parts finish; the odd ones hang
        assert time.monotonic() < deadline
    await first.kill()
    second = await run("await:wf-fan_out")
    assert await second.wait_for("result") == "result [0, 1, 4, 9, 16, 25]"
    log = await entries(ledger, "wf-fan_out")
    for i in (0, 2, 4):
        assert log.count(f"part:{i}:start") == 1 and log.count(f"part:{i}:done") == 1
    for i in (1, 3, 5):
        assert log.count(f"part:{i}:start") == 2 and log.count(f"part:{i}:done") == 1
    rows = await ledger.fetch(
        "SELECT step_id, output FROM operation_outputs "
        "WHERE workflow_id = 'wf-fan_out' ORDER BY step_id"
    )
    assert [(r[0], r[1]) for r in rows] == [(i, str(i * i)) for i in range(6)]
