"""A frozen server: the postmaster and every backend SIGSTOPped, connections left open.

Nothing answers and nothing fails: statements simply hang. Once the server
is thawed the workflows must finish as if nothing happened, and a runtime
asked to shut down while the server is frozen must still return in bounded
time (its workflows stay PENDING and recover later).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest
from cluster import Cluster
from ledger import Observer, book, four_steps, problems, until
from proxy import PostgresProxy

from dbos_async import DBOS, SetWorkflowID, WorkflowHandle

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(180)]

COUNT = 30
# The runtime's own limits add up to 22 s: 2 s to close the listener, then
# 10 s per pool (system, transactions) before it terminates their connections.
SHUTDOWN_BOUND = 30.0
PATIENCE = 35.0  # how long the server stays frozen waiting for shutdown() to return


@pytest.fixture
def app_db_url(cluster_db_url: str) -> str:
    return cluster_db_url


@asynccontextmanager
async def frozen(cluster: Cluster) -> AsyncIterator[None]:
    pids = await anyio.to_thread.run_sync(cluster.freeze)
    try:
        yield
    finally:
        await anyio.to_thread.run_sync(cluster.thaw, pids)


async def start_all(dbos: DBOS) -> dict[str, WorkflowHandle[Any]]:
    handles = {}
    for i in range(COUNT):
        with SetWorkflowID(f"wf-{i}"):
            handles[f"wf-{i}"] = await dbos.start_workflow(four_steps, i, 0.1)
    return handles


async def mid_flight(ledger: Observer) -> None:
    async def enough() -> bool:
        return bool(await ledger.fetchval("SELECT count(*) FROM public.ledger") >= COUNT)

    await until(enough, "a quarter of the work done")


async def test_workflows_finish_after_the_server_was_frozen(
    cluster: Cluster, app_db_url: str, ledger: Observer
) -> None:
    async with DBOS(database_url=app_db_url, app_version="chaos") as dbos:
        handles = await start_all(dbos)
        await mid_flight(ledger)
        async with frozen(cluster):
            await anyio.sleep(3)  # the freeze itself: nothing answers for 3 s
        results = {wid: await h.get_result(timeout=60) for wid, h in handles.items()}
    assert results == {f"wf-{i}": i + 6 for i in range(COUNT)}
    assert await problems(ledger) == []


async def shutdown_while_frozen(cluster: Cluster, dbos: DBOS) -> float | None:
    """Seconds ``shutdown()`` took with the server frozen (None: more than ``PATIENCE``).

    The server is thawed either way, and the shutdown awaited to its end.
    """
    loop = asyncio.get_running_loop()
    began = loop.time()
    async with frozen(cluster):
        stopping = asyncio.ensure_future(dbos.shutdown())
        done, _ = await asyncio.wait([stopping], timeout=PATIENCE)
        took = loop.time() - began if done else None
    with anyio.fail_after(PATIENCE):
        await stopping
    print(f"shutdown with the server frozen took {took}s (bound {SHUTDOWN_BOUND}s)")
    return took


async def test_an_idle_runtime_shuts_down_while_the_server_is_frozen(
    cluster: Cluster, app_db_url: str, ledger: Observer
) -> None:
    dbos = DBOS(database_url=app_db_url, app_version="chaos")
    await dbos.launch()
    with SetWorkflowID("before"):
        assert await (await dbos.start_workflow(four_steps, 1)).get_result(timeout=30) == 7
    took = await shutdown_while_frozen(cluster, dbos)
    assert took is not None and took <= SHUTDOWN_BOUND, f"shutdown() took {took}s"


async def test_a_busy_runtime_shuts_down_while_the_server_is_frozen(
    cluster: Cluster, app_db_url: str, ledger: Observer
) -> None:
    dbos = DBOS(database_url=app_db_url, app_version="chaos")
    await dbos.launch()
    await start_all(dbos)
    await mid_flight(ledger)
    took = await shutdown_while_frozen(cluster, dbos)
    assert took is not None and took <= SHUTDOWN_BOUND, f"shutdown() took {took}s"
    # What stayed PENDING recovers, and the history is whole.
    async with DBOS(database_url=app_db_url, app_version="chaos") as again:
        for i in range(COUNT):
            handle = await again.retrieve_workflow(f"wf-{i}")
            assert await handle.get_result(timeout=60) == i + 6
    assert await problems(ledger) == []


@DBOS.step()
async def pause(i: int) -> int:
    await book.record("pause")  # straight to the server: only the runtime's bytes are held
    await asyncio.sleep(0.1)
    return i


@DBOS.workflow()
async def pauses(i: int) -> int:
    return sum([await pause(n) for n in range(20)]) + i


async def held_shutdown(
    app_db_url: str, ledger: Observer, proxy: PostgresProxy
) -> tuple[float | None, list[logging.LogRecord]]:
    """Shut a runtime down while its checkpoint writes hang: the seconds it took, and
    the errors dbos_async logged meanwhile."""
    errors: list[logging.LogRecord] = []

    class Errors(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            errors.append(record)

    handler = Errors(logging.ERROR)
    logging.getLogger("dbos_async").addHandler(handler)
    dbos = DBOS(database_url=proxy.url(app_db_url), app_version="chaos")
    await dbos.launch()
    stopping: list[asyncio.Future[None]] = []
    try:
        took = await shutdown_with_writes_held(dbos, proxy, ledger, stopping)
    finally:
        proxy.restore()  # then whatever was held goes through, and the shutdown ends
        with anyio.fail_after(PATIENCE):
            await (stopping[0] if stopping else dbos.shutdown())
        logging.getLogger("dbos_async").removeHandler(handler)
    print(f"shutdown with checkpoint writes held took {took}s (bound {SHUTDOWN_BOUND}s)")
    return took, errors


async def test_shutdown_returns_while_checkpoint_writes_hang(
    app_db_url: str, ledger: Observer, proxy: PostgresProxy
) -> None:
    # Issue 20 A.14, fixed on main by 6a3ef34: before, shutdown() waited for
    # the shielded writes until the server answered again.
    took, _ = await held_shutdown(app_db_url, ledger, proxy)
    assert took is not None and took <= SHUTDOWN_BOUND, f"shutdown() took {took}s"


async def test_a_shutdown_that_abandons_writes_logs_no_failure(
    app_db_url: str, ledger: Observer, proxy: PostgresProxy
) -> None:
    _, errors = await held_shutdown(app_db_url, ledger, proxy)
    assert [r.getMessage() for r in errors] == []


async def shutdown_with_writes_held(
    dbos: DBOS, proxy: PostgresProxy, ledger: Observer, stopping: list[asyncio.Future[None]]
) -> float | None:
    """Seconds ``shutdown()`` took with checkpoint writes held (None: more than PATIENCE)."""
    for i in range(COUNT):
        with SetWorkflowID(f"wf-{i}"):
            await dbos.start_workflow(pauses, i)
    await mid_flight(ledger)
    proxy.blackhole()  # the server stops answering the runtime: its writes hang from here

    async def checkpoint_held() -> bool:
        # A step's checkpoint: its statement (a first use on that connection)
        # or its parameters (the step's name) are held.
        return any(b"operation_outputs" in d or b"pause" in d for d in proxy.held)

    await until(checkpoint_held, "a step's checkpoint write is held")
    loop = asyncio.get_running_loop()
    began = loop.time()
    stopping.append(asyncio.ensure_future(dbos.shutdown()))
    done, _ = await asyncio.wait(stopping, timeout=PATIENCE)
    return loop.time() - began if done else None
