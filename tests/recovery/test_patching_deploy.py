"""Deploying a patched release: v2 finishes v1's work along the old path, new work along the new.

Real processes: v1 is SIGKILLed with a workflow parked mid-way; v2, the same
workflow with a new step behind ``DBOS.patch``, recovers it at launch. The
step bodies' ledger shows which release ran each step, and that none ran twice.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import asyncpg
import pytest
from child import Child
from deploy_steps import LEDGER_TABLE

from dbos_async import DBOSClient

APP = Path(__file__).with_name("patch_app.py")


@pytest.fixture
async def run(db_url: str) -> AsyncIterator[Callable[[str], Awaitable[Child]]]:
    children: list[Child] = []

    async def start(release: str) -> Child:
        child = await Child.start(APP, release, db_url, env={"DBOS_APP_VERSION": ""})
        children.append(child)
        return child

    yield start
    for child in children:
        await child.kill()


@pytest.fixture
async def ledger(conn: asyncpg.Connection) -> asyncpg.Connection:
    await conn.execute(LEDGER_TABLE)
    return conn


async def entries(conn: asyncpg.Connection, workflow_id: str) -> list[tuple[str, str]]:
    rows = await conn.fetch(
        "SELECT entry, release FROM public.ledger WHERE workflow_id = $1 ORDER BY at",
        workflow_id,
    )
    return [(r[0], r[1]) for r in rows]


async def step_names(conn: asyncpg.Connection, workflow_id: str) -> list[str]:
    rows = await conn.fetch(
        "SELECT function_name FROM operation_outputs WHERE workflow_id = $1 ORDER BY step_id",
        workflow_id,
    )
    return [r[0] for r in rows]


async def test_with_patching_v2_finishes_old_work_on_the_old_path_and_new_on_the_new(
    run: Callable[[str], Awaitable[Child]], ledger: asyncpg.Connection, db_url: str
) -> None:
    v1 = await run("v1")
    assert await v1.wait_for("launched") == "launched PATCHING_ENABLED"
    await v1.wait_for("waiting wf-old")  # reserve is recorded; parked on recv
    await v1.kill()
    assert await entries(ledger, "wf-old") == [("reserve", "v1")]
    row = await ledger.fetchrow(
        "SELECT status, app_version FROM workflow_status WHERE workflow_id = 'wf-old'"
    )
    assert row is not None and tuple(row) == ("PENDING", "PATCHING_ENABLED")

    v2 = await run("v2")  # its launch recovers wf-old; then it starts wf-new
    waiting = {await v2.wait_for("waiting"), await v2.wait_for("waiting")}
    assert waiting == {"waiting wf-old", "waiting wf-new"}
    async with DBOSClient(db_url) as client:
        for workflow_id in ("wf-old", "wf-new"):
            await client.send(workflow_id, "go", topic="go")
    assert await v2.wait_for("result wf-old") == 'result wf-old ["reserve", "go", "ship"]'
    assert await v2.wait_for("result wf-new") == (
        'result wf-new ["audit", "reserve", "go", "ship"]'
    )
    assert await v2.finish() == 0

    # Each step ran once: the old workflow's first in v1, the rest in v2.
    assert await entries(ledger, "wf-old") == [("reserve", "v1"), ("ship", "v2")]
    assert await entries(ledger, "wf-new") == [("audit", "v2"), ("reserve", "v2"), ("ship", "v2")]
    old = await step_names(ledger, "wf-old")
    new = await step_names(ledger, "wf-new")
    assert "DBOS.patch-audit" not in old and old[0] == "deploy.reserve"
    assert new[:3] == ["DBOS.patch-audit", "deploy.audit", "deploy.reserve"]
    assert old[-1] == new[-1] == "deploy.ship"
    statuses = await ledger.fetch(
        "SELECT status, app_version FROM workflow_status ORDER BY workflow_id"
    )
    assert [tuple(r) for r in statuses] == [("SUCCESS", "PATCHING_ENABLED")] * 2
