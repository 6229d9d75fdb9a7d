"""The runtime: lifecycle, configuration, connections, several runtimes, shutdown."""

from __future__ import annotations

import asyncio

import anyio
import asyncpg
import pytest

from dbos_async import (
    DBOS,
    DatabaseUnavailableError,
    DBOSError,
    SetWorkflowID,
    WorkflowStatusString,
)
from dbos_async.registry import compute_app_version


async def _backends(conn: asyncpg.Connection) -> int:
    return await conn.fetchval(
        "SELECT count(*) FROM pg_stat_activity "
        "WHERE datname = current_database() AND pid <> pg_backend_pid()"
    )


@DBOS.workflow()
async def hello(name: str) -> str:
    return f"hello {name}"


async def test_leaving_the_block_closes_every_connection(
    db_url: str, conn: asyncpg.Connection
) -> None:
    async with DBOS(database_url=db_url, app_version="test") as dbos:
        await asyncio.gather(*(hello(str(i)) for i in range(50)))
        assert await _backends(conn) >= 1
        assert repr(dbos).endswith("running>")
    assert await _backends(conn) == 0


async def test_launch_twice_and_use_after_shutdown_raise(db_url: str) -> None:
    dbos = DBOS(database_url=db_url, app_version="test")
    await dbos.launch()
    with pytest.raises(DBOSError, match="already launched"):
        await dbos.launch()
    await dbos.shutdown()
    await dbos.shutdown()  # idempotent
    with pytest.raises(DBOSError, match="No DBOS runtime is running"):
        await hello("late")


async def test_launch_and_shutdown_from_different_tasks(db_url: str) -> None:
    dbos = DBOS(database_url=db_url, app_version="test")
    await asyncio.create_task(dbos.launch())
    assert await hello("x") == "hello x"
    await asyncio.create_task(dbos.shutdown())


async def test_configuration_resolution_order(db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DBOS_DATABASE_URL", db_url)
    monkeypatch.setenv("DBOS_EXECUTOR_ID", "from-env")
    monkeypatch.delenv("DBOS_APP_VERSION", raising=False)
    async with DBOS() as dbos:
        assert dbos.database_url == db_url
        assert dbos.executor_id == "from-env"
        assert dbos.app_version == await anyio.to_thread.run_sync(compute_app_version)
    monkeypatch.setenv("DBOS_APP_VERSION", "env-version")
    async with DBOS(executor_id="arg", app_version=None) as dbos:
        assert dbos.executor_id == "arg"
        assert dbos.app_version == "env-version"


async def test_unreachable_database_gives_a_clear_error() -> None:
    dbos = DBOS(database_url="postgresql://postgres@127.0.0.1:1/nope", app_version="x")
    with pytest.raises(DBOSError, match="Cannot connect"):
        await dbos.launch()


async def test_bad_configuration_is_rejected_at_construction() -> None:
    with pytest.raises(ValueError, match="schema"):
        DBOS(database_url="postgresql://x/y", schema="Robert'); DROP")
    with pytest.raises(ValueError, match="executor_id"):
        DBOS(database_url="postgresql://x/y", executor_id="bad\x00id")


async def test_several_runtimes_live_side_by_side(db_url: str) -> None:
    async with (
        DBOS(database_url=db_url, executor_id="a", app_version="test") as a,
        DBOS(database_url=db_url, executor_id="b", app_version="test", schema="other") as b,
    ):
        with SetWorkflowID("on-a"):
            ha = await a.start_workflow(hello, "a")
        with SetWorkflowID("on-b"):
            hb = await b.start_workflow(hello, "b")
        assert [await ha.get_result(), await hb.get_result()] == ["hello a", "hello b"]
        assert (await a.get_workflow_status("on-a")).executor_id == "a"  # type: ignore[union-attr]
        assert await a.get_workflow_status("on-b") is None  # another schema
        assert await b.get_workflow_status("on-b") is not None


_parked: list[asyncio.Event] = []


@DBOS.step()
async def park() -> None:
    _parked[0].set()
    await asyncio.Event().wait()


@DBOS.workflow()
async def parks_forever() -> None:
    await park()


async def test_shutdown_leaves_running_workflows_pending(db_url: str) -> None:
    _parked[:] = [asyncio.Event()]
    async with DBOS(database_url=db_url, app_version="test") as dbos:
        with SetWorkflowID("parked"):
            handle = await dbos.start_workflow(parks_forever)
        await _parked[0].wait()
    async with DBOS(database_url=db_url, app_version="other-version") as reader:
        status = await reader.get_workflow_status("parked")
    assert status is not None and status.status is WorkflowStatusString.PENDING
    with pytest.raises(DBOSError):
        await handle.get_result()


async def test_lost_database_gives_database_unavailable(db_url: str, pg_server_url: str) -> None:
    async with DBOS(database_url=db_url, app_version="test") as dbos:
        admin = await asyncpg.connect(pg_server_url)
        try:
            # Cut every connection of the runtime, and refuse new ones for a moment.
            await admin.execute(
                f'ALTER DATABASE "{db_url.rsplit("/", 1)[1]}" ALLOW_CONNECTIONS false'
            )
            await admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1",
                db_url.rsplit("/", 1)[1],
            )
            with pytest.raises(DBOSError) as info:
                await dbos.get_workflow_status("anything")
            assert type(info.value).__name__ == "DatabaseUnavailableError"
        finally:
            await admin.execute(
                f'ALTER DATABASE "{db_url.rsplit("/", 1)[1]}" ALLOW_CONNECTIONS true'
            )
            await admin.close()
        # Connections come back once the database accepts them again. A pooled
        # connection the outage broke in a way the driver notices only on use
        # fails that one call (and is closed: pool.acquire's contract), so the
        # pool may need a call per connection it holds; never more.
        for attempt in range(dbos._runtime.config.pool_size + 1):
            try:
                assert await dbos.get_workflow_status("anything") is None
                break
            except DatabaseUnavailableError:
                assert attempt < dbos._runtime.config.pool_size


async def test_a_runtime_heartbeats_its_executor(db_url: str, conn: asyncpg.Connection) -> None:
    async with DBOS(database_url=db_url, app_version="hb", executor_id="exec-1"):
        row = await conn.fetchrow("SELECT app_version, heartbeat_at FROM executors")
    assert row is not None and row["app_version"] == "hb" and row["heartbeat_at"] > 0


def test_lease_seconds_must_be_positive() -> None:
    with pytest.raises(ValueError, match="lease_seconds"):
        DBOS(database_url="postgresql://unused", lease_seconds=0)
