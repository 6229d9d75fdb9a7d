"""Portable histories: export, load, import (history.py and the CLI's workflow export/import)."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import asyncpg
import orjson
import pytest

from dbos_async import DBOS, DBOSClient, SetWorkflowID, WorkflowNotFoundError
from dbos_async.history import (
    FORMAT,
    HistoryConflictError,
    WorkflowHistory,
    dump_document,
    export_histories,
    import_histories,
    load_histories,
    read_histories,
    to_document,
)
from dbos_async.models import WorkflowStatusString
from dbos_async.systemdb.migrate import migrate
from dbos_async.systemdb.pool import acquire, create_pool
from tests.integration.test_cli import HOSTILE, assert_one_line_error, dbos_cli

SCHEMA = "dbos_async"
_counter = itertools.count()
ran: list[str] = []
release = asyncio.Event()
waiting = asyncio.Event()


@pytest.fixture(autouse=True)
def _reset() -> None:
    global release, waiting
    ran.clear()
    release, waiting = asyncio.Event(), asyncio.Event()


@DBOS.step()
async def part(n: int) -> str:
    ran.append(f"part-{n}")
    return f"part-{n}"


@DBOS.step()
async def explode() -> None:
    raise ValueError("boom, on purpose")


@DBOS.step()
async def wait_for_release() -> str:
    ran.append("wait")
    waiting.set()
    await release.wait()
    return "released"


async def two_steps(n: int) -> str:
    # Each call runs in a task of its own: a branch of the workflow.
    return await part(n) + await part(n + 10)


@DBOS.workflow()
async def child(tag: str) -> str:
    return await part(100) + tag


@DBOS.workflow()
async def everything(n: int) -> list[str]:
    first = await part(0)
    await DBOS.sleep(0.01)
    fanned = await asyncio.gather(*(two_steps(i) for i in range(1, n + 1)))
    await DBOS.set_event("state", {"done": n, "text": "Ünï ☃"})
    await DBOS.write_stream("log", "hello")
    await DBOS.close_stream("log")
    try:
        await explode()
    except ValueError:
        pass
    kid = await child("-kid")
    message = await DBOS.recv("greetings", timeout_seconds=10)
    return [first, *fanned, kid, str(message)]


@DBOS.workflow()
async def failing() -> None:
    await part(99)
    raise RuntimeError("broken on purpose")


@DBOS.workflow()
async def two_parts() -> list[str]:
    return [await part(1), await wait_for_release()]


async def _new_database(pg_server_url: str) -> str:
    name = f"history_{os.getpid()}_{next(_counter)}"
    admin = await asyncpg.connect(pg_server_url)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    return pg_server_url.rsplit("/", 1)[0] + f"/{name}"


async def _drop_database(pg_server_url: str, url: str) -> None:
    admin = await asyncpg.connect(pg_server_url)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{url.rsplit("/", 1)[1]}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest.fixture
async def other_url(pg_server_url: str) -> AsyncIterator[str]:
    """A second database, created empty and migrated here (not from the template)."""
    url = await _new_database(pg_server_url)
    pool = await create_pool(url, schema=SCHEMA, max_size=1)
    try:
        async with acquire(pool) as conn:
            assert await migrate(conn, SCHEMA)
    finally:
        await pool.close()
    yield url
    await _drop_database(pg_server_url, url)


@pytest.fixture
async def recorded(dbos: DBOS) -> list[str]:
    """Finished workflows with every kind of record; returns the IDs to export."""
    with SetWorkflowID(HOSTILE):
        handle = await dbos.start_workflow(everything, 3)
    with SetWorkflowID("greeting-1"):  # an idempotency key on the message
        await dbos.send(HOSTILE, {"hi": "there"}, "greetings")
    assert (await handle.get_result())[-1] == "{'hi': 'there'}"
    with SetWorkflowID("failing"), pytest.raises(RuntimeError):
        await failing()
    await dbos.send("failing", "never read", "late")  # stays unconsumed
    return [HOSTILE, "failing"]


# Every system table a history covers, with its rows in a stable order; the
# columns that belong to one database (fence, claimed_by, enqueue_seq,
# message_id) are left out.
_DUMPS = {
    "workflow_status": (
        "SELECT workflow_id, status, name, inputs, output, error, app_name, app_version,"
        " executor_id, created_at, updated_at, recovery_attempts, queue_name,"
        " parent_workflow_id, forked_from, deduplication_id, priority, timeout_ms,"
        " deadline_epoch_ms, started_at, queue_partition_key, not_before, branched_steps"
        " FROM workflow_status WHERE workflow_id = ANY($1) ORDER BY workflow_id"
    ),
    "operation_outputs": (
        "SELECT * FROM operation_outputs WHERE workflow_id = ANY($1) ORDER BY workflow_id, step_id"
    ),
    "branch_outputs": (
        "SELECT * FROM branch_outputs WHERE workflow_id = ANY($1)"
        " ORDER BY workflow_id, branch, step_id"
    ),
    "workflow_events": (
        "SELECT * FROM workflow_events WHERE workflow_id = ANY($1) ORDER BY workflow_id, key"
    ),
    "streams": (
        'SELECT * FROM streams WHERE workflow_id = ANY($1) ORDER BY workflow_id, key, "offset"'
    ),
    "messages": (
        "SELECT destination_id, topic, payload, created_at, consumed_at, idempotency_key"
        " FROM messages WHERE destination_id = ANY($1) ORDER BY destination_id, message_id"
    ),
}


async def _dump(url: str, workflow_ids: list[str]) -> dict[str, list[dict[str, Any]]]:
    conn = await asyncpg.connect(url, server_settings={"search_path": SCHEMA})
    try:
        return {
            table: [dict(r) for r in await conn.fetch(query, workflow_ids)]
            for table, query in _DUMPS.items()
        }
    finally:
        await conn.close()


async def _export(url: str, ids: list[str], **options: Any) -> dict[str, Any]:
    async with DBOSClient(url) as client:
        return await export_histories(client.pool, ids, **options)


async def _import(url: str, histories: list[WorkflowHistory], **options: Any) -> list[str]:
    async with DBOSClient(url) as client:
        return await import_histories(client.pool, histories, **options)


def _ids_in(document: dict[str, Any]) -> list[str]:
    return [entry["workflow"]["workflow_id"] for entry in document["workflows"]]


# -- the library -------------------------------------------------------------------------


async def test_export_import_round_trips_byte_exact(
    dbos: DBOS, recorded: list[str], other_url: str
) -> None:
    document = await _export(dbos.database_url, recorded)
    assert document["format"] == FORMAT and document["format_version"] == 1
    assert _ids_in(document) == recorded  # exactly the IDs given, in order: no children
    data = dump_document(document)
    histories = load_histories(data, name="export.json")
    assert to_document(histories, exported_at=document["exported_at"]) == document

    # Everything a history holds was recorded: branches, a sleep, an event, a
    # stream with its end, an error, a child, messages read and unread.
    main, failed = histories
    names = {c.function_name for c in main.calls}
    assert {"DBOS.sleep", "DBOS.set_event", "DBOS.write_stream", "DBOS.recv"} <= names
    assert {"0", "1", "2"} <= {c.branch for c in main.calls}
    assert all(c.origin is not None for c in main.calls if c.branch)
    assert any(c.error for c in main.calls) and any(c.child_workflow_id for c in main.calls)
    assert [e.key for e in main.events] == ["state"]
    assert [(s.offset, s.closed) for s in main.streams] == [(0, False), (1, True)]
    (key,) = [m.idempotency_key for m in main.messages]
    assert key is not None and key.endswith(":greeting-1")
    assert main.messages[0].consumed_at is not None
    assert failed.workflow.status is WorkflowStatusString.ERROR and failed.workflow.error
    assert [(m.topic, m.consumed_at) for m in failed.messages] == [("late", None)]

    assert await _import(other_url, histories) == recorded
    assert await _dump(other_url, recorded) == await _dump(dbos.database_url, recorded)
    again = await _export(other_url, recorded)
    assert dump_document({**again, "exported_at": 0}) == dump_document(
        {**document, "exported_at": 0}
    )
    async with DBOSClient(other_url) as client:
        assert await read_histories(client.pool, recorded) == histories
        steps = await client.list_workflow_steps(HOSTILE)
    # As the management API reads them (errors compared by repr: exceptions are never equal).
    assert list(map(repr, steps)) == list(map(repr, await dbos.list_workflow_steps(HOSTILE)))


async def test_with_children_exports_the_workflows_they_started(
    dbos: DBOS, recorded: list[str]
) -> None:
    document = await _export(dbos.database_url, [HOSTILE], with_children=True)
    ids = _ids_in(document)
    assert ids[0] == HOSTILE and len(ids) == 2
    assert document["workflows"][1]["workflow"]["parent_workflow_id"] == HOSTILE
    # A child named explicitly too is exported once, where it was named.
    document = await _export(dbos.database_url, [ids[1], HOSTILE], with_children=True)
    assert _ids_in(document) == [ids[1], HOSTILE]


async def test_export_of_an_unknown_id_names_it(dbos: DBOS, recorded: list[str]) -> None:
    with pytest.raises(WorkflowNotFoundError, match=r"'nope'.*'nope-2'") as info:
        await _export(dbos.database_url, ["failing", "nope", "nope-2"])
    assert info.value.workflow_id == "nope"


async def test_import_of_an_existing_id_writes_nothing(
    dbos: DBOS, recorded: list[str], other_url: str
) -> None:
    main, failed = load_histories(await _export(dbos.database_url, recorded))
    assert await _import(other_url, [failed]) == ["failing"]
    before = await _dump(other_url, recorded)
    with pytest.raises(HistoryConflictError, match="'failing'") as info:
        await _import(other_url, [main, failed])
    assert info.value.workflow_ids == ("failing",)
    assert await _dump(other_url, recorded) == before  # nothing of `main` either
    assert (
        before["workflow_status"]
        == (await _dump(dbos.database_url, ["failing"]))["workflow_status"]
    )
    with pytest.raises(ValueError, match="workflow ID 'failing' twice"):
        await _import(other_url, [failed, failed])


async def test_unfinished_workflows_are_kept_runnable_or_cancelled(
    dbos: DBOS, conn: asyncpg.Connection, pg_server_url: str
) -> None:
    with SetWorkflowID("running"):
        handle = await dbos.start_workflow(two_parts)
    await asyncio.wait_for(waiting.wait(), 10)  # part(1) is recorded by then
    await conn.execute(
        "INSERT INTO workflow_status (workflow_id, status, name, queue_name, created_at,"
        " updated_at, deduplication_id, enqueue_seq) VALUES ('queued', 'ENQUEUED',"
        " 'app.charge', 'payments', 1, 1, 'dedup-1', nextval('workflow_enqueue_seq'))"
    )
    histories = load_histories(await _export(dbos.database_url, ["running", "queued"]))
    # Read in one snapshot while it runs: its row PENDING, its first step recorded.
    assert histories[0].workflow.status is WorkflowStatusString.PENDING
    assert [c.output for c in histories[0].calls] == ['"part-1"']
    release.set()
    await handle.get_result()

    kept, cancelled = await _new_database(pg_server_url), await _new_database(pg_server_url)
    try:
        for url in (kept, cancelled):
            pool = await create_pool(url, schema=SCHEMA, max_size=1)
            async with acquire(pool) as c:
                await migrate(c, SCHEMA)
            await pool.close()
        await _import(kept, histories)
        await _import(cancelled, histories, unfinished="cancel")
        source = await _dump(dbos.database_url, ["queued"])
        assert await _dump(kept, ["queued"]) == source
        rows = await _dump(cancelled, ["running", "queued"])
        assert [r["status"] for r in rows["workflow_status"]] == ["CANCELLED", "CANCELLED"]
        other = await asyncpg.connect(kept, server_settings={"search_path": SCHEMA})
        try:
            state = await other.fetchrow(
                "SELECT w.status, w.enqueue_seq, w.claimed_by, w.fence FROM workflow_status w"
                " WHERE workflow_id = 'queued'"
            )
            assert state is not None and state["status"] == "ENQUEUED"
            assert state["enqueue_seq"] is not None and state["claimed_by"] is None
            assert (
                await other.fetchval(
                    "SELECT status FROM workflow_status WHERE workflow_id = 'running'"
                )
                == "PENDING"
            )
        finally:
            await other.close()
        # The work moved: a runtime of the new database finishes it from its
        # recorded step (part(1) does not run again).
        ran.clear()
        async with DBOS(database_url=kept, app_version="test") as moved:
            result = await (await moved.retrieve_workflow("running")).get_result()
        assert result == ["part-1", "released"] and ran == ["wait"]
        # A live deduplication ID held here refuses the import, naming why.
        with pytest.raises(HistoryConflictError, match="deduplication ID"):
            await _import(kept, [_renamed(histories[1], "queued-2")])
    finally:
        await _drop_database(pg_server_url, kept)
        await _drop_database(pg_server_url, cancelled)


def _renamed(history: WorkflowHistory, workflow_id: str) -> WorkflowHistory:
    return dataclasses.replace(
        history, workflow=dataclasses.replace(history.workflow, workflow_id=workflow_id)
    )


# -- files that are not history files --------------------------------------------------------


def _valid() -> dict[str, Any]:
    workflow = {
        "workflow_id": "wf",
        "status": "SUCCESS",
        "name": "app.wf",
        "created_at": 1,
        "updated_at": 2,
        "branched_steps": True,
    }
    call = {"branch": "", "step_id": 0, "origin": None, "function_name": "app.step"}
    return {
        "format": FORMAT,
        "format_version": 1,
        "workflows": [{"workflow": workflow, "calls": [call]}],
    }


def _with(path: str, value: Any) -> dict[str, Any]:
    data = _valid()
    target: Any = data
    *parents, last = path.split("/")
    for key in parents:
        target = target[int(key)] if key.isdigit() else target[key]
    if value is _DROP:
        del target[last]
    else:
        target[last] = value
    return data


_DROP = object()


def _twice() -> dict[str, Any]:
    data = _valid()
    data["workflows"].append(data["workflows"][0])
    return data


def test_a_minimal_hand_written_file_loads() -> None:
    (history,) = load_histories(_valid())
    assert history.workflow_id == "wf" and history.calls[0].output is None
    assert history.events == () and history.workflow.priority == 0


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b'{"format": "dbos-async-history", "format_ver', "bad JSON"),
        (b"[1, 2]", "not a dbos-async history file (format 'a list'"),
        (b'{"format": "temporal-history"}', "format 'temporal-history'"),
        (orjson.dumps(_with("format_version", 2)), "format_version 2 is newer"),
        (orjson.dumps(_with("format_version", "1")), "format_version '1' is not"),
        (orjson.dumps(_with("workflows", {})), "workflows must be a list"),
        (orjson.dumps(_with("extra", 1)), "unknown field 'extra'"),
        (
            orjson.dumps(_with("workflows/0/workflow/colour", 1)),
            "workflows[0].workflow has unknown field 'colour'",
        ),
        (
            orjson.dumps(_with("workflows/0/workflow/created_at", _DROP)),
            "workflows[0].workflow.created_at is missing",
        ),
        (
            orjson.dumps(_with("workflows/0/workflow/status", "DONE")),
            "workflows[0].workflow.status must be one of ENQUEUED",
        ),
        (
            orjson.dumps(_with("workflows/0/workflow/inputs", 5)),
            "workflows[0].workflow.inputs must be a string or null, got a number",
        ),
        (
            orjson.dumps(_with("workflows/0/calls/0/step_id", 2**31)),
            "workflows[0].calls[0].step_id is out of range",
        ),
        (
            orjson.dumps(_with("workflows/0/calls/0/branch", "a.b")),
            "calls[0].branch 'a.b' is not a branch",
        ),
        (
            orjson.dumps(_with("workflows/0/calls/0/branch", "0")),
            "calls[0].origin must be null for branch ''",
        ),
        (
            orjson.dumps(_with("workflows/0/workflow/workflow_id", "")),
            "workflows[0].workflow.workflow_id must not be empty",
        ),
        (orjson.dumps(_twice()), "workflows has workflow ID 'wf' twice"),
    ],
)
def test_a_file_that_is_not_a_history_file_is_refused_by_name(
    tmp_path: Path, content: bytes, problem: str
) -> None:
    path = tmp_path / "histories.json"
    path.write_bytes(content)
    with pytest.raises(ValueError) as info:
        load_histories(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ") or message.startswith(f"{path} is not"), message
    assert problem in message, message


def test_a_missing_file_is_a_value_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"missing\.json: cannot read it"):
        load_histories(tmp_path / "missing.json")


# -- the command line --------------------------------------------------------------------


async def test_cli_export_to_a_file_then_import(
    dbos: DBOS, recorded: list[str], other_url: str, tmp_path: Path
) -> None:
    path = tmp_path / "histories.json"
    run = await dbos_cli("workflow", "export", *recorded, "-o", str(path), url=dbos.database_url)
    assert run.code == 0, run
    assert run.out.strip() == f"exported 2 workflows to {path}"
    run = await dbos_cli("workflow", "import", str(path), url=other_url)
    assert run.code == 0, run
    assert "imported failing (ERROR)" in run.out
    assert await _dump(other_url, recorded) == await _dump(dbos.database_url, recorded)

    # Again: the IDs are taken, nothing is written, one line says which.
    run = await dbos_cli("workflow", "import", str(path), url=other_url)
    assert_one_line_error(run, "Already recorded in this database", "'failing'")


async def test_cli_export_to_stdout_and_import_from_stdin(
    dbos: DBOS, recorded: list[str], pg_server_url: str
) -> None:
    run = await dbos_cli("workflow", "export", "failing", url=dbos.database_url)
    assert run.code == 0 and run.err == "", run
    assert _ids_in(orjson.loads(run.out)) == ["failing"]
    target = await _new_database(pg_server_url)
    try:
        assert (await dbos_cli("migrate", url=target)).code == 0
        proc = await asyncio.create_subprocess_exec(
            *(sys.executable, "-m", "dbos_async", "--json", "workflow", "import", "-"),
            *("--database-url", target),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env={k: v for k, v in os.environ.items() if k != "DBOS_DATABASE_URL"},
        )
        out, err = await proc.communicate(run.out.encode())
        assert proc.returncode == 0, err
        assert orjson.loads(out) == {"imported": ["failing"]}
        assert await _dump(target, ["failing"]) == await _dump(dbos.database_url, ["failing"])
    finally:
        await _drop_database(pg_server_url, target)


async def test_cli_failures_are_one_line(dbos: DBOS, recorded: list[str], tmp_path: Path) -> None:
    run = await dbos_cli("workflow", "export", "failing", "nope", url=dbos.database_url)
    assert_one_line_error(run, "'nope'", "nothing was exported")
    path = tmp_path / "broken.json"
    await anyio.Path(path).write_bytes(b'{"format": "dbos-async-history", "format_version": 9}')
    run = await dbos_cli("workflow", "import", str(path), url=dbos.database_url)
    assert_one_line_error(run, str(path), "format_version 9 is newer")
