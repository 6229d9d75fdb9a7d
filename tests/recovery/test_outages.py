"""A lost database connection is never a durable call's outcome.

Connections are lost for real: a test terminates the backend of a running
transaction or step with ``pg_terminate_backend``, or makes the server refuse
connections for a while. The workflow must go on once the database answers,
with the outcome it would have had without the outage.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import urllib.parse
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field

import anyio
import asyncpg
import pytest

from dbos_async import (
    DBOS,
    DatabaseUnavailableError,
    DBOSError,
    SetWorkflowID,
    WorkflowCancelledError,
    WorkflowStatusString,
    serialization,
)


@dataclass
class Scene:
    """What a test and the bodies it runs share; made per test (events bind to its loop)."""

    runs: list[str] = field(default_factory=list)
    body_pid: asyncio.Future[int] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )
    killed: asyncio.Event = field(default_factory=asyncio.Event)  # the test killed body_pid
    fifth_run: asyncio.Event = field(default_factory=asyncio.Event)
    released: asyncio.Event = field(default_factory=asyncio.Event)  # `held` may end
    later: asyncio.Event = field(default_factory=asyncio.Event)
    started: asyncio.Event = field(default_factory=asyncio.Event)


scene: Scene


@pytest.fixture(autouse=True)
async def fresh_scene() -> None:
    global scene
    scene = Scene()


@pytest.fixture
async def ledger(conn: asyncpg.Connection) -> AsyncIterator[asyncpg.Connection]:
    """A ledger table whose rows die with their backend at COMMIT when asked to."""
    await conn.execute(
        """
        CREATE TABLE public.ledger (
            id serial PRIMARY KEY, entry text NOT NULL, die_at_commit bool NOT NULL);
        CREATE FUNCTION public.die() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            PERFORM pg_terminate_backend(pg_backend_pid());
            RETURN NULL;
        END $$;
        CREATE CONSTRAINT TRIGGER die_at_commit AFTER INSERT ON public.ledger
            DEFERRABLE INITIALLY DEFERRED FOR EACH ROW
            WHEN (NEW.die_at_commit) EXECUTE FUNCTION public.die();
        """
    )
    yield conn


@contextlib.contextmanager
def logged(action: str) -> Iterator[asyncio.Event]:
    """An event set once dbos_async logs a record whose ``action`` is ``action``."""
    seen = asyncio.Event()

    class Handler(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if getattr(record, "action", None) == action:
                seen.set()

    handler = Handler()
    logging.getLogger("dbos_async").addHandler(handler)
    try:
        yield seen
    finally:
        logging.getLogger("dbos_async").removeHandler(handler)


async def terminate(conn: asyncpg.Connection, pid: int) -> None:
    """Terminate backend ``pid`` and wait until it is gone."""
    assert await conn.fetchval("SELECT pg_terminate_backend($1, 10000)", pid)


# -- transactions ----------------------------------------------------------------------


@DBOS.transaction()
async def post_lost_mid_body(entry: str) -> int:
    scene.runs.append(entry)
    conn = DBOS.connection
    await conn.execute("INSERT INTO ledger (entry, die_at_commit) VALUES ($1, false)", entry)
    if len(scene.runs) == 1:
        scene.body_pid.set_result(await conn.fetchval("SELECT pg_backend_pid()"))
        await scene.killed.wait()
    return int(await conn.fetchval("SELECT count(*) FROM ledger"))


@DBOS.transaction()
async def post_lost_at_commit(entry: str) -> int:
    scene.runs.append(entry)
    first = len(scene.runs) == 1
    conn = DBOS.connection
    await conn.execute("INSERT INTO ledger (entry, die_at_commit) VALUES ($1, $2)", entry, first)
    return int(await conn.fetchval("SELECT count(*) FROM ledger"))


@DBOS.workflow()
async def posts(entry: str, at_commit: bool) -> int:
    if at_commit:
        return await post_lost_at_commit(entry)
    return await post_lost_mid_body(entry)


async def assert_no_error_recorded(conn: asyncpg.Connection, workflow_id: str) -> None:
    errors = await conn.fetch(
        "SELECT function_name, error FROM operation_outputs "
        "WHERE workflow_id = $1 AND error IS NOT NULL",
        workflow_id,
    )
    assert errors == []


async def test_a_transaction_whose_connection_is_lost_mid_body_commits_once(
    dbos: DBOS, ledger: asyncpg.Connection
) -> None:
    with SetWorkflowID("lost-mid-body"):
        handle = await dbos.start_workflow(posts, "rent", False)
    await terminate(ledger, await scene.body_pid)
    scene.killed.set()
    assert await handle.get_result(timeout=20) == 1
    assert scene.runs == ["rent", "rent"]  # retried once the connection was gone
    assert await ledger.fetchval("SELECT count(*) FROM public.ledger") == 1
    await assert_no_error_recorded(ledger, "lost-mid-body")


async def test_a_transaction_whose_connection_is_lost_at_commit_commits_once(
    dbos: DBOS, ledger: asyncpg.Connection
) -> None:
    with SetWorkflowID("lost-at-commit"):
        handle = await dbos.start_workflow(posts, "rent", True)
    assert await handle.get_result(timeout=20) == 1
    assert scene.runs == ["rent", "rent"]
    assert await ledger.fetchval("SELECT count(*) FROM public.ledger") == 1
    await assert_no_error_recorded(ledger, "lost-at-commit")


# -- steps -----------------------------------------------------------------------------


@DBOS.transaction()
async def count_in_a_transaction() -> int:
    conn = DBOS.connection
    if len(scene.runs) == 1:
        scene.body_pid.set_result(await conn.fetchval("SELECT pg_backend_pid()"))
        await scene.killed.wait()
    return int(await conn.fetchval("SELECT count(*) FROM ledger"))


@DBOS.step()
async def count_entries(db_url: str, via_transaction: bool) -> int:
    scene.runs.append("count")
    if via_transaction:  # inside a step, a plain transaction: its lost connection raises
        return await count_in_a_transaction()
    conn = await asyncpg.connect(db_url)
    try:
        if len(scene.runs) == 1:
            scene.body_pid.set_result(await conn.fetchval("SELECT pg_backend_pid()"))
            await scene.killed.wait()
        return int(await conn.fetchval("SELECT count(*) FROM public.ledger"))
    finally:
        conn.terminate()


@DBOS.workflow()
async def counts(db_url: str, via_transaction: bool) -> int:
    return await count_entries(db_url, via_transaction) + 1


@pytest.mark.parametrize("via_transaction", [False, True], ids=["asyncpg", "transaction"])
async def test_a_step_whose_connection_is_lost_runs_again(
    dbos: DBOS, db_url: str, ledger: asyncpg.Connection, via_transaction: bool
) -> None:
    # The body's own asyncpg connection (an asyncpg error), or a transaction it
    # calls (DatabaseUnavailableError): either way the step's body raises it.
    with SetWorkflowID("step-lost"):
        handle = await dbos.start_workflow(counts, db_url, via_transaction)
    await terminate(ledger, await scene.body_pid)
    scene.killed.set()
    assert await handle.get_result(timeout=20) == 1
    assert scene.runs == ["count", "count"]
    await assert_no_error_recorded(ledger, "step-lost")


# -- replays ---------------------------------------------------------------------------


@pytest.fixture
async def gone_url(db_url: str, conn: asyncpg.Connection) -> AsyncIterator[str]:
    """The URL of a database that stays away: its role may open no connection at all."""
    role = f"gone_{db_url.rsplit('/', 1)[1]}"
    # A password too: the embedded cluster checks passwords, and a refused login
    # would be a failure of its own, not the outage the tests are about.
    await conn.execute(f"CREATE ROLE \"{role}\" LOGIN PASSWORD 'gone' CONNECTION LIMIT 0")
    url = urllib.parse.urlsplit(db_url)
    yield url._replace(netloc=f"{role}:gone@{url.hostname}:{url.port}").geturl()
    await conn.execute(f'DROP ROLE "{role}"')


@DBOS.step()
async def read_payments(url: str) -> int:
    scene.runs.append(f"{asyncio.get_running_loop().time()}")
    if len(scene.runs) == 5:
        scene.fifth_run.set()
    conn = await asyncpg.connect(url)  # TooManyConnectionsError, every time
    conn.terminate()
    return 0


@DBOS.workflow()
async def pays(url: str) -> int:
    return await read_payments(url)


async def test_replays_that_record_nothing_new_back_off(
    dbos: DBOS, gone_url: str, ledger: asyncpg.Connection
) -> None:
    first = 0.02
    dbos._runtime.replay_backoff = (first, 30.0)
    with SetWorkflowID("backs-off"):
        await dbos.start_workflow(pays, gone_url)
    await scene.fifth_run.wait()
    times = [float(t) for t in scene.runs]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    # Each replay found nothing new recorded: each wait is twice the last,
    # not the same short wait again and again.
    assert all(gap >= first * 2**k for k, gap in enumerate(gaps)), gaps
    await assert_no_error_recorded(ledger, "backs-off")


async def test_cancelling_a_workflow_that_waits_to_replay_ends_it_at_once(
    dbos: DBOS, gone_url: str, ledger: asyncpg.Connection
) -> None:
    dbos._runtime.replay_backoff = (30.0, 30.0)
    with logged("replay_later") as waiting, SetWorkflowID("cancelled-while-waiting"):
        handle = await dbos.start_workflow(pays, gone_url)
        await waiting.wait()
    await dbos.cancel_workflow("cancelled-while-waiting")
    with pytest.raises(WorkflowCancelledError):
        await handle.get_result(timeout=5)
    assert len(scene.runs) == 1  # it did not run again after its cancellation
    status = await handle.get_status()
    assert status.status is WorkflowStatusString.CANCELLED


@DBOS.step()
async def fails_once_recorded() -> None:
    raise LookupError("recorded")


@DBOS.workflow()
async def replays_a_recorded_outage() -> None:
    await fails_once_recorded()


async def test_an_outage_recorded_by_an_earlier_release_is_an_outcome_not_an_outage(
    dbos: DBOS, ledger: asyncpg.Connection
) -> None:
    with SetWorkflowID("recorded-outage"), pytest.raises(LookupError):
        await replays_a_recorded_outage()
    # Earlier releases recorded a lost connection as the step's outcome.
    recorded = serialization.encode_exception(DatabaseUnavailableError("Lost the connection"))
    await ledger.execute("UPDATE operation_outputs SET error = $1", recorded)
    handle = await dbos.resume_workflow("recorded-outage")
    # Replay returns what was recorded: an error, not an outage to wait out forever.
    with pytest.raises(DatabaseUnavailableError, match="Lost the connection"):
        await handle.get_result(timeout=10)
    status = await handle.get_status()
    assert status.status is WorkflowStatusString.ERROR


@DBOS.step()
async def take_path(path: str) -> str:
    scene.runs.append(path)
    return path


@DBOS.workflow()
async def falls_back(url: str) -> str:
    try:
        await read_payments(url)
    except Exception:  # swallows the outage too, as workflow code may
        return await take_path("fallback")
    return await take_path("main")


async def test_a_workflow_that_swallows_an_outage_records_nothing_more_and_replays(
    dbos: DBOS, gone_url: str, ledger: asyncpg.Connection
) -> None:
    dbos._runtime.replay_backoff = (0.2, 30.0)
    with logged("replay_later") as waiting, SetWorkflowID("falls-back"):
        handle = await dbos.start_workflow(falls_back, gone_url)
        result = asyncio.ensure_future(handle.get_result(timeout=20))
        replays = asyncio.ensure_future(waiting.wait())
        await asyncio.wait([result, replays], return_when=asyncio.FIRST_COMPLETED)
        replays.cancel()
    # The payments database answers again.
    role = urllib.parse.urlsplit(gone_url).username
    await ledger.execute(f'ALTER ROLE "{role}" CONNECTION LIMIT -1')
    # What the workflow did after the outage went unrecorded: its replay takes the main path.
    assert await result == "main"
    assert "fallback" not in scene.runs
    names = await ledger.fetch("SELECT function_name FROM operation_outputs ORDER BY step_id")
    assert [r[0].rsplit(".", 1)[1] for r in names] == ["read_payments", "take_path"]


# -- wait_first ------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def refused(pg_server_url: str, db_url: str, keep: asyncpg.Connection) -> AsyncIterator[None]:
    """An outage: every connection to the test database but ``keep`` is cut, new ones refused."""
    database = db_url.rsplit("/", 1)[1]
    admin = await asyncpg.connect(pg_server_url)  # ALTER DATABASE runs from another one
    try:
        await admin.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS false')
        await admin.fetchval(
            "SELECT count(pg_terminate_backend(pid, 10000)) FROM pg_stat_activity "
            "WHERE datname = $1 AND pid <> $2",
            database,
            keep.get_server_pid(),
        )
        yield
    finally:
        await admin.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS true')
        await admin.close()


@pytest.fixture
async def there(db_url: str, dbos: DBOS) -> AsyncIterator[DBOS]:
    """A second runtime: what runs there, ``dbos`` knows only from the database."""
    async with DBOS(database_url=db_url, app_version="test", executor_id="there") as runtime:
        yield runtime


@DBOS.workflow()
async def held() -> str:
    await scene.released.wait()
    return "held"


@DBOS.step()
async def finishes_later() -> str:
    scene.started.set()  # wait_first is watching the handle by now
    await scene.later.wait()
    return "later"


@DBOS.workflow()
async def first_of(held_id: str) -> str:
    handle = await DBOS.retrieve_workflow(held_id)
    winner = await DBOS.wait_first([handle, finishes_later()])
    return "held" if winner is handle else str(await winner)


async def test_wait_first_does_not_take_an_outage_for_an_ending(
    dbos: DBOS, there: DBOS, db_url: str, pg_server_url: str, ledger: asyncpg.Connection
) -> None:
    with SetWorkflowID("held"):
        await there.start_workflow(held)
    handle = await dbos.retrieve_workflow("held")  # running there: read from its row
    later = asyncio.ensure_future(scene.later.wait())
    race = asyncio.ensure_future(DBOS.wait_first([handle, later]))
    with logged("wait_reread") as reread:
        async with refused(pg_server_url, db_url, ledger):
            failed = asyncio.ensure_future(reread.wait())
            await asyncio.wait([race, failed], return_when=asyncio.FIRST_COMPLETED)
            failed.cancel()
            assert not race.done(), "a failed read of the handle's status won"
    scene.later.set()
    assert await race is later
    scene.released.set()
    assert await handle.get_result(timeout=20) == "held"


async def test_wait_first_in_a_workflow_records_a_winner_that_finished(
    dbos: DBOS, there: DBOS, db_url: str, pg_server_url: str, ledger: asyncpg.Connection
) -> None:
    with SetWorkflowID("held"):
        await there.start_workflow(held)
    with SetWorkflowID("first-of"):
        handle = await dbos.start_workflow(first_of, "held")
    await scene.started.wait()
    with logged("wait_reread") as reread:
        async with refused(pg_server_url, db_url, ledger):
            # Bounded only so that a run that never logs one still ends the outage.
            with anyio.move_on_after(5):
                await reread.wait()
    scene.later.set()
    assert await handle.get_result(timeout=20) == "later"
    assert reread.is_set()
    output = await ledger.fetchval(
        "SELECT output FROM operation_outputs WHERE function_name = 'DBOS.wait_first'"
    )
    assert output == "1"  # the second item, recorded for replay
    scene.released.set()


async def test_wait_first_does_not_take_a_shutdown_for_an_ending(db_url: str) -> None:
    runtime = DBOS(database_url=db_url, app_version="test", executor_id="stops")
    await runtime.launch()
    with SetWorkflowID("held"):
        handle = await runtime.start_workflow(held)
    later = asyncio.ensure_future(scene.later.wait())
    race = asyncio.ensure_future(DBOS.wait_first([handle, later]))
    await runtime.shutdown()  # the workflow stays PENDING: it has not ended
    with pytest.raises(DBOSError, match="stays PENDING"):
        await race
    later.cancel()
