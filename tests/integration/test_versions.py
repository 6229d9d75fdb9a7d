"""The version registry (issue 10, items 1 and 3): the latest version, stranded work, adoption."""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Iterator
from datetime import datetime

import anyio
import asyncpg
import pytest

from dbos_async import DBOS, AppVersion, DBOSClient
from dbos_async.management import INTERNAL_QUEUE
from dbos_async.scheduler import forget_schedule
from tests.integration.test_cli import dbos_cli

ledger: list[str] = []


@DBOS.step()
async def write(what: str) -> str:
    ledger.append(what)
    return what


@DBOS.workflow()
async def versioned(tag: str) -> str:
    return await write(tag)


VERSIONED = "test_versions.versioned"


async def _park(
    conn: asyncpg.Connection, workflow_id: str, status: str, version: str, name: str = VERSIONED
) -> None:
    """A workflow of ``version`` left by a runtime that is gone (no instance row)."""
    await conn.execute(
        "INSERT INTO workflow_status (workflow_id, status, name, inputs, app_version,"
        " executor_id, queue_name, created_at, updated_at, branched_steps)"
        " VALUES ($1, $2, $3, $4, $5, 'gone-executor', $6, 1, 1, true)",
        workflow_id,
        status,
        name,
        f'{{"args": ["{workflow_id}"], "kwargs": {{}}}}',
        version,
        INTERNAL_QUEUE if status == "ENQUEUED" else None,
    )


async def _register(conn: asyncpg.Connection, version: str, latest_at: int) -> None:
    await conn.execute(
        "INSERT INTO app_versions VALUES ($1, 'app', $2, $2, $2)", version, latest_at
    )


def _by_version(versions: list[AppVersion]) -> dict[str, AppVersion]:
    return {v.version: v for v in versions}


async def test_each_runtime_registers_its_version_and_the_newest_is_the_latest(
    db_url: str,
) -> None:
    async with DBOS(database_url=db_url, app_version="v1") as first:
        listed = _by_version(await first.list_application_versions())
        assert listed["v1"].is_latest and listed["v1"].live_executors == 1
        first_seen = listed["v1"].first_seen
        assert first_seen is not None and listed["v1"].last_seen is not None
        async with DBOS(database_url=db_url, app_version="v2") as second:
            listed = _by_version(await second.list_application_versions())
            assert [v for v in listed if listed[v].is_latest] == ["v2"]
            assert listed["v1"].live_executors == listed["v2"].live_executors == 1
            assert second._runtime.latest_version == "v2"
            # An older version that launches again does not become the latest.
            async with DBOS(database_url=db_url, app_version="v1"):
                listed = _by_version(await second.list_application_versions())
                assert listed["v2"].is_latest and listed["v1"].live_executors == 2
                assert listed["v1"].first_seen == first_seen
            await second.set_latest_application_version("v1")
            listed = _by_version(await second.list_application_versions())
            assert listed["v1"].is_latest and not listed["v2"].is_latest
            with pytest.raises(ValueError, match=r"'nope'.*known versions: v2, v1"):
                await second.set_latest_application_version("nope")
    async with DBOSClient(db_url) as client:  # the client sees them too; nothing runs now
        listed = _by_version(await client.list_application_versions())
        assert listed["v1"].live_executors == listed["v2"].live_executors == 0


async def test_an_enqueue_that_names_no_version_goes_to_the_latest(
    db_url: str, conn: asyncpg.Connection
) -> None:
    async def enqueue(client: DBOSClient, workflow_id: str) -> str:
        await client.enqueue("x", queue_name="q", workflow_name=VERSIONED, workflow_id=workflow_id)
        found: str = await conn.fetchval(
            "SELECT app_version FROM workflow_status WHERE workflow_id = $1", workflow_id
        )
        return found

    async with DBOSClient(db_url) as client:
        await enqueue(client, "no-version-yet")
        assert await conn.fetchval("SELECT app_version FROM workflow_status") is None  # any
        async with DBOS(database_url=db_url, app_version="old", lease_seconds=math.inf):
            # A newer version launched once and gone is never the latest.
            await _register(conn, "gone", 2**62)
            assert await enqueue(client, "to-old") == "old"
            async with DBOS(database_url=db_url, app_version="new", lease_seconds=math.inf):
                assert await enqueue(client, "to-new") == "new"
                await client.set_latest_application_version("old")
                assert await enqueue(client, "to-old-again") == "old"
                listed = _by_version(await client.list_application_versions())
                assert [v for v in listed if listed[v].is_latest] == ["old"]


async def test_stranded_work_is_counted_and_warned_about_with_the_command(
    db_url: str, conn: asyncpg.Connection, caplog: pytest.LogCaptureFixture
) -> None:
    await _register(conn, "v1", 1)
    for i in range(2):
        await _park(conn, f"p{i}", "PENDING", "v1")
    for i in range(3):
        await _park(conn, f"e{i}", "ENQUEUED", "v1")
    with caplog.at_level(logging.WARNING, logger="dbos_async"):
        async with DBOS(database_url=db_url, app_version="v2", lease_seconds=math.inf) as dbos:
            assert dbos._runtime.stranded_workflows == 5
            listed = _by_version(await dbos.list_application_versions())
            listing = await dbos_cli("versions", url=db_url)
    assert listed["v1"].stranded == 5 and (listed["v1"].pending, listed["v1"].enqueued) == (2, 3)
    assert listed["v2"].stranded == 0 and listed["v2"].is_latest
    [warning] = [r for r in caplog.records if getattr(r, "action", "") == "stranded"]
    assert warning.levelno == logging.WARNING
    message = warning.getMessage()
    assert message.startswith("5 workflows of app version v1 (2 PENDING, 3 ENQUEUED) wait")
    adopt = "adopt --from-version v1 --to-version v2 --only-compatible --app MODULE:OBJ"
    assert f"`dbos-async workflow {adopt}`" in message
    assert listing.code == 0, listing
    lines = listing.out.splitlines()
    assert lines[0].split()[:6] == ["APP", "VERSION", "LATEST", "LIVE", "PENDING", "ENQUEUED"]
    assert lines[1].split()[:5] == ["v2", "yes", "1", "0", "0"]  # its one live runtime
    assert lines[2].split()[:4] == ["v1", "0", "2", "3"]
    assert "5 workflows of v1 are stranded" in lines[-1]


async def test_adopt_moves_a_versions_work_and_the_new_version_runs_it(
    db_url: str, conn: asyncpg.Connection
) -> None:
    ledger.clear()
    await _register(conn, "v1", 1)
    await _park(conn, "pending-old", "PENDING", "v1")
    await _park(conn, "enqueued-old", "ENQUEUED", "v1")
    await _park(conn, "finished-old", "SUCCESS", "v1")
    async with DBOS(database_url=db_url, app_version="v2", lease_seconds=3) as dbos:
        same = await dbos_cli("workflow", "adopt", "--from-version", "v2", url=db_url)
        assert same.code == 1 and "already of that version" in same.err, same
        moved = await dbos_cli("workflow", "adopt", "--from-version", "v1", url=db_url)
        assert moved.code == 0, moved
        assert moved.out.strip() == "moved 2 workflows of app version v1 (1 PENDING, 1 ENQUEUED)"
        with anyio.fail_after(20):  # dequeued at once; the PENDING one at the next adoption
            for workflow_id in ("enqueued-old", "pending-old"):
                handle = await dbos.retrieve_workflow(workflow_id)
                assert await handle.get_result() == workflow_id
        again = await dbos_cli("workflow", "adopt", "--from-version", "v1", url=db_url)
        assert again.out.strip() == "app version v1 has no PENDING or ENQUEUED workflow to move"
    assert sorted(ledger) == ["enqueued-old", "pending-old"]  # each ran once
    row = await conn.fetchrow(
        "SELECT status, app_version FROM workflow_status WHERE workflow_id = 'finished-old'"
    )
    assert tuple(row) == ("SUCCESS", "v1")  # type: ignore[arg-type] # finished work stays


async def test_a_workflow_whose_function_is_not_registered_here_is_left_never_failed(
    db_url: str, conn: asyncpg.Connection, caplog: pytest.LogCaptureFixture
) -> None:
    await _park(conn, "foreign", "PENDING", "v1", name="another_app.workflow")
    await _park(conn, "cancelled-foreign", "CANCELLED", "v1", name="another_app.workflow")
    caplog.set_level(logging.WARNING, logger="dbos_async")
    async with DBOS(database_url=db_url, app_version="v1", lease_seconds=math.inf) as dbos:
        # Said at launch, with the count kept for metrics.
        [warning] = [r for r in caplog.records if getattr(r, "action", "") == "unrunnable"]
        assert warning.getMessage().startswith(
            "1 workflows of this app version (v1) name functions this process does not "
            "register (another_app.workflow: 1)"
        )
        assert dbos._runtime.unrunnable_workflows == 1
        # Launch recovery looked at it (its executor is gone) and left it.
        row = await conn.fetchrow(
            "SELECT status, claimed_by, recovery_attempts FROM workflow_status"
            " WHERE workflow_id = 'foreign'"
        )
        assert tuple(row) == ("PENDING", None, 0)  # type: ignore[arg-type]
        # Resumed from this runtime, it is enqueued for one that has the function.
        await dbos.resume_workflow("cancelled-foreign")
        row = await conn.fetchrow(
            "SELECT status, queue_name, app_version, claimed_by FROM workflow_status"
            " WHERE workflow_id = 'cancelled-foreign'"
        )
        assert tuple(row) == ("ENQUEUED", INTERNAL_QUEUE, "v1", None)  # type: ignore[arg-type]


@pytest.fixture
def tick_schedule() -> Iterator[tuple[list[datetime], asyncio.Event]]:
    seen: list[datetime] = []
    three = asyncio.Event()

    @DBOS.scheduled("* * * * * *")
    @DBOS.workflow(name="tv.tick")
    async def tick(scheduled_at: datetime, actual_at: datetime) -> None:
        seen.append(scheduled_at)
        if len(seen) >= 3:
            three.set()

    yield seen, three
    forget_schedule("tv.tick")


async def test_a_runtime_of_an_older_version_sends_its_ticks_to_the_latest(
    db_url: str, conn: asyncpg.Connection, tick_schedule: tuple[list[datetime], asyncio.Event]
) -> None:
    seen, three = tick_schedule
    await _register(conn, "v1", 1)
    await _register(conn, "v2", 2)
    # v2 first: v1's launch then learns that v2 is the latest live version (a
    # runtime learns it at each heartbeat; until then both may fire a tick,
    # once, as two runtimes of one version do).
    async with (
        DBOS(database_url=db_url, app_version="v2", executor_id="new"),
        DBOS(database_url=db_url, app_version="v1", executor_id="old"),
    ):
        with anyio.fail_after(10):
            await three.wait()
    rows = await conn.fetch(
        "SELECT app_version, executor_id, count(*) FROM workflow_status WHERE name = 'tv.tick'"
        " AND status = 'SUCCESS' GROUP BY 1, 2"
    )
    assert [tuple(r)[:2] for r in rows] == [("v2", "new")], rows
    assert len(seen) == len(set(seen))
