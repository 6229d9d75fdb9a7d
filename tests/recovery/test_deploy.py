"""Deploying new code with workflows in flight, by version (issue 10): real processes.

v1 is SIGKILLed with three workflows parked mid-way. v2, where one of the two
workflows has a step inserted, launches under its own app version: it warns
that v1's work is stranded, ``workflow check`` names where v1's histories
diverge from v2's code, and ``workflow adopt --only-compatible`` moves only
the workflow v2 replays, which v2 then finishes. The step bodies' ledger
shows that no step ran twice. (Patching is ``test_patching_deploy.py``.)
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import asyncpg
import pytest
from child import Child
from deploy_steps import LEDGER_TABLE

from dbos_async import DBOSClient
from tests.integration.test_cli import Run, dbos_cli

HERE = Path(__file__).parent
APP = HERE / "evolve_app.py"


@pytest.fixture
async def run(db_url: str) -> AsyncIterator[Callable[[str], Awaitable[Child]]]:
    children: list[Child] = []

    async def start(release: str) -> Child:
        child = await Child.start(APP, db_url, env={"EVOLVE_RELEASE": release})
        children.append(child)
        return child

    yield start
    for child in children:
        await child.kill()


@pytest.fixture
async def ledger(conn: asyncpg.Connection) -> asyncpg.Connection:
    await conn.execute(LEDGER_TABLE)
    return conn


async def entries(conn: asyncpg.Connection) -> list[tuple[str, str, str]]:
    rows = await conn.fetch("SELECT workflow_id, entry, release FROM public.ledger ORDER BY 1, at")
    return [(r[0], r[1], r[2]) for r in rows]


async def v2_cli(*args: str, url: str) -> Run:
    """The CLI, importing the app as v2's code (``--app evolve_app:app``)."""
    previous = os.environ.get("EVOLVE_RELEASE"), os.environ.get("PYTHONPATH")
    os.environ["EVOLVE_RELEASE"] = "v2"
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HERE), previous[1]]))
    try:
        return await dbos_cli(*args, url=url)
    finally:
        for name, value in zip(("EVOLVE_RELEASE", "PYTHONPATH"), previous, strict=True):
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


async def test_a_deploy_strands_checks_and_adopts_only_what_replays(
    run: Callable[[str], Awaitable[Child]], ledger: asyncpg.Connection, db_url: str
) -> None:
    v1 = await run("v1")
    assert await v1.wait_for("launched") == "launched v1"
    parked = {await v1.wait_for("waiting") for _ in range(3)}
    assert parked == {"waiting order-1", "waiting order-2", "waiting note-1"}
    await v1.kill()

    v2 = await run("v2")
    # Its launch counts v1's work, which no runtime runs now, and says what to do.
    warning = await v2.wait_for("WARNING 3 workflows of app version v1")
    assert warning.startswith("WARNING 3 workflows of app version v1 (3 PENDING, 0 ENQUEUED) wait")
    adopt = "adopt --from-version v1 --to-version v2 --only-compatible --app MODULE:OBJ"
    assert f"`dbos-async workflow {adopt}`" in warning

    checked = await v2_cli(
        "workflow", "check", "--app", "evolve_app:app", "--version", "v1", url=db_url
    )
    assert checked.code == 1, checked  # some histories do not replay
    # The workflow's own code runs in the check (only durable calls are served
    # from the record): its print comes out too.
    lines = sorted(line for line in checked.out.splitlines() if not line.startswith("waiting"))
    assert lines == [
        "  replayed 1 recorded calls; the history ends at step 1",
        "1 compatible, 2 incompatible",
        "note-1 (deploy.note, PENDING): compatible",
        "order-1 (deploy.order, PENDING): diverges at step 0: recorded deploy.reserve, "
        "code calls deploy.audit",
        "order-2 (deploy.order, PENDING): diverges at step 0: recorded deploy.reserve, "
        "code calls deploy.audit",
    ], checked.out

    elsewhere = await v2_cli(
        "workflow", "adopt", "--from-version", "v1", "--to-version", "v1-hotfix",
        "--only-compatible", "--app", "evolve_app:app", url=db_url,
    )  # fmt: skip
    assert elsewhere.code == 1 and "not the checked app's version (v2)" in elsewhere.err
    adopted = await v2_cli(
        "workflow",
        "adopt",
        "--from-version",
        "v1",
        "--only-compatible",
        "--app",
        "evolve_app:app",
        url=db_url,
    )
    assert adopted.code == 0, adopted
    assert [line for line in adopted.out.splitlines() if not line.startswith("waiting")] == [
        "moved 1 workflows of app version v1 (1 PENDING, 0 ENQUEUED)",
        "left order-1: diverges at step 0: recorded deploy.reserve, code calls deploy.audit",
        "left order-2: diverges at step 0: recorded deploy.reserve, code calls deploy.audit",
    ], adopted.out
    versions = {
        r["workflow_id"]: (r["status"], r["app_version"])
        for r in await ledger.fetch("SELECT workflow_id, status, app_version FROM workflow_status")
    }
    assert versions == {
        "note-1": ("PENDING", "v2"),
        "order-1": ("PENDING", "v1"),  # left for a v1 runtime, or a patch: never failed
        "order-2": ("PENDING", "v1"),
    }

    # v2 takes over note-1 (its v1 runtime is gone) and replays its recorded step.
    await v2.wait_for("waiting note-1")
    async with DBOSClient(db_url) as client:
        await client.send("note-1", "go", topic="go")
    assert await v2.wait_for("result note-1") == 'result note-1 ["reserve", "go", "ship"]'
    assert await entries(ledger) == [
        ("note-1", "reserve", "v1"),
        ("note-1", "ship", "v2"),  # each step once: reserve was not run again
        ("order-1", "reserve", "v1"),
        ("order-2", "reserve", "v1"),
    ]
