"""Management: list (filters, paging, payloads, EXPLAIN), steps, restart, fork, delete."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from typing import Any

import anyio
import asyncpg
import pytest

from dbos_async import (
    DBOS,
    SetWorkflowID,
    WorkflowCancelledError,
    WorkflowConflictError,
    WorkflowNotFoundError,
    WorkflowStatusString,
)
from dbos_async.management import INTERNAL_QUEUE, workflow_filter
from dbos_async.systemdb.management import list_workflows_statement

calls: list[str] = []
gate = asyncio.Event()

HOSTILE = [
    'it\'s "quoted"; DROP TABLE workflow_status; --',
    "100% _wild_ %s %(x)s $1 \\N",
    "Ünïcødé ☃ 工作流 🚀",
    "x" * 1024,
]


@DBOS.step()
async def note(what: str) -> str:
    calls.append(what)
    return f"{what}#{len(calls)}"


@DBOS.step()
async def explode(what: str) -> None:
    raise ValueError(f"boom {what}")


@DBOS.step()
async def wait_for_gate() -> None:
    gate.set()
    await asyncio.sleep(60)


@DBOS.workflow()
async def three_steps(tag: str) -> list[str]:
    return [await note(f"{tag}-a"), await note(f"{tag}-b"), await note(f"{tag}-c")]


@DBOS.workflow()
async def mixed() -> str:
    try:
        await explode("x")
    except ValueError:
        pass
    await DBOS.sleep(0)
    kids = await three_steps("kid")
    return kids[0]


@DBOS.workflow()
async def blocked() -> None:
    await wait_for_gate()


@pytest.fixture(autouse=True)
def _reset() -> None:
    global gate
    calls.clear()
    gate = asyncio.Event()


async def _run(workflow_id: str, tag: str) -> list[str]:
    with SetWorkflowID(workflow_id):
        return await three_steps(tag)


# -- list_workflows ---------------------------------------------------------------------


async def test_list_workflows_orders_pages_and_filters(dbos: DBOS) -> None:
    for i in range(5):
        await _run(f"w{i}", f"t{i}")
        await anyio.sleep(0.002)  # distinct created_at milliseconds: the listing orders by them
    with pytest.raises(ValueError):
        with SetWorkflowID("bad"):
            await mixed_failing()
    listed = await DBOS.list_workflows()
    assert [s.workflow_id for s in listed] == ["w0", "w1", "w2", "w3", "w4", "bad"]
    newest = await DBOS.list_workflows(sort_desc=True, limit=2)
    assert [s.workflow_id for s in newest] == ["bad", "w4"]
    page = await DBOS.list_workflows(limit=2, offset=2)
    assert [s.workflow_id for s in page] == ["w2", "w3"]
    assert [s.workflow_id for s in await DBOS.list_workflows(status="ERROR")] == ["bad"]
    both = await DBOS.list_workflows(
        status=["ERROR", "SUCCESS"], workflow_ids=["w1", "bad", "nope"]
    )
    assert {s.workflow_id for s in both} == {"w1", "bad"}
    by_name = await DBOS.list_workflows(name=three_steps.__dbos_entry__.name)  # type: ignore[attr-defined]
    assert len(by_name) == 5 and all(s.output is not None for s in by_name)
    w2 = listed[2]
    assert w2.created_at is not None
    window = await DBOS.list_workflows(start_time=w2.created_at, end_time=w2.created_at)
    assert "w2" in {s.workflow_id for s in window}
    dt = datetime.fromtimestamp(listed[-1].created_at / 1000 + 1, UTC)  # type: ignore[operator]
    assert await DBOS.list_workflows(start_time=dt) == []
    assert len(await DBOS.list_workflows(app_version="test", executor_id=["local"])) == 6
    assert await DBOS.list_workflows(app_version="other") == []
    assert await DBOS.list_workflows(queue_name="q") == []
    assert await DBOS.list_workflows(workflow_ids=[]) == []


@DBOS.workflow()
async def mixed_failing() -> None:
    raise ValueError("nope")


async def test_list_workflows_decodes_payloads_unless_told_not_to(dbos: DBOS) -> None:
    await _run("p1", "tag")
    with pytest.raises(ValueError):
        with SetWorkflowID("p2"):
            await mixed_failing()
    full = {s.workflow_id: s for s in await DBOS.list_workflows()}
    assert full["p1"].input == {"args": ["tag"], "kwargs": {}}
    assert full["p1"].output == ["tag-a#1", "tag-b#2", "tag-c#3"]
    assert isinstance(full["p2"].error, ValueError) and str(full["p2"].error) == "nope"
    bare = {
        s.workflow_id: s for s in await DBOS.list_workflows(load_input=False, load_output=False)
    }
    assert bare["p1"].input is None and bare["p1"].output is None and bare["p2"].error is None
    assert bare["p1"].status is WorkflowStatusString.SUCCESS and bare["p1"].name == full["p1"].name
    only_out = await DBOS.list_workflows(workflow_ids=["p1"], load_input=False)
    assert only_out[0].input is None and only_out[0].output == full["p1"].output


async def test_the_listing_reads_no_payload_column_when_not_asked(conn: asyncpg.Connection) -> None:
    big = json.dumps({"args": ["x" * 300_000], "kwargs": {}})
    await conn.execute(
        "INSERT INTO workflow_status (workflow_id, status, name, inputs, output, created_at,"
        " updated_at) VALUES ('big', 'SUCCESS', 'n', $1, $1, 1, 1)",
        big,
    )
    query, args = list_workflows_statement(
        conn, workflow_filter(load_input=False, load_output=False)
    )
    rows = await conn.fetch(query, *args)
    assert rows[0]["inputs"] is None and rows[0]["output"] is None
    query, args = list_workflows_statement(conn, workflow_filter())
    assert (await conn.fetch(query, *args))[0]["inputs"] == big


@pytest.mark.parametrize(
    ("filters", "message"),
    [
        ({"status": "DONE"}, "unknown workflow status"),
        ({"status": ["SUCCESS", "success"]}, "unknown workflow status"),
        ({"limit": -1}, "limit"),
        ({"offset": -5}, "offset"),
        ({"limit": True}, "limit"),
        ({"start_time": "yesterday"}, "start_time"),
        ({"name": "a\x00b"}, "NUL"),
        ({"workflow_ids": ["x" * 1025]}, "limit is 1024"),
    ],
)
async def test_malformed_filters_raise_value_error(
    dbos: DBOS, filters: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        await DBOS.list_workflows(**filters)


async def _insert(
    conn: asyncpg.Connection, wid: str, status: str, queue: str | None, at: int
) -> None:
    await conn.execute(
        "INSERT INTO workflow_status (workflow_id, status, name, queue_name, created_at,"
        " updated_at) VALUES ($1, $2, 'n', $3, $4, $4)",
        wid,
        status,
        queue,
        at,
    )


async def test_list_queued_workflows(dbos: DBOS, conn: asyncpg.Connection) -> None:
    await _insert(conn, "e1", "ENQUEUED", "pay", 1)
    await _insert(conn, "p1", "PENDING", "pay", 2)
    await _insert(conn, "s1", "SUCCESS", "pay", 3)
    await _insert(conn, "e2", "ENQUEUED", "mail", 4)
    await _insert(conn, "p2", "PENDING", None, 5)  # not on a queue
    queued = await DBOS.list_queued_workflows()
    assert [s.workflow_id for s in queued] == ["e1", "p1", "e2"]
    assert [s.workflow_id for s in await DBOS.list_queued_workflows(queue_name="pay")] == [
        "e1",
        "p1",
    ]
    assert [s.workflow_id for s in await DBOS.list_queued_workflows(status="SUCCESS")] == ["s1"]
    newest = await DBOS.list_queued_workflows(sort_desc=True, limit=1)
    assert [s.workflow_id for s in newest] == ["e2"] and newest[0].queue_name == "mail"


# -- EXPLAIN on 100,000 workflows -----------------------------------------------------------


def _scans(plan: dict[str, Any]) -> list[dict[str, Any]]:
    found = [plan] if "Scan" in plan["Node Type"] else []
    for child in plan.get("Plans", []):
        found += _scans(child)
    return found


async def test_listing_the_newest_of_100000_workflows_walks_an_index(
    conn: asyncpg.Connection,
) -> None:
    await conn.execute(
        """
        INSERT INTO workflow_status (workflow_id, status, name, app_version, executor_id,
                                     queue_name, created_at, updated_at)
        SELECT 'wf-' || i,
               CASE WHEN i % 100 = 0 THEN 'ERROR' WHEN i % 50 = 1 THEN 'ENQUEUED'
                    ELSE 'SUCCESS' END,
               CASE WHEN i = 77777 THEN 'rare' ELSE 'app.workflow_' || (i % 10) END,
               'v' || (i % 3), 'exec-' || (i % 10),
               CASE WHEN i % 20 = 1 THEN 'q' || (i % 3) END,
               1700000000000 + i, 1700000000000 + i
        FROM generate_series(1, 100000) AS i
        """
    )
    await conn.execute("ANALYZE workflow_status")
    cases: list[dict[str, Any]] = [
        {},
        {"sort_desc": False},
        {"status": "ERROR"},
        {"status": ["ERROR", "CANCELLED"]},
        {"name": "rare"},
        {"queue_name": "q1"},
        {"executor_id": "exec-3"},
        {"app_version": "v2", "status": "SUCCESS"},
        {"workflow_ids": ["wf-5", "wf-99999"]},
        {"start_time": 1700000050000, "end_time": 1700000060000},
        {"queued_only": True, "status": ["ENQUEUED", "PENDING"]},
        {"queued_only": True, "status": ["ENQUEUED", "PENDING"], "queue_name": "q2"},
    ]
    for case in cases:
        options = {"sort_desc": True, "limit": 50, **case}
        query, args = list_workflows_statement(conn, workflow_filter(**options))
        raw = await conn.fetchval("EXPLAIN (ANALYZE, FORMAT JSON) " + query, *args)
        plan = json.loads(raw)[0]["Plan"]
        scans = _scans(plan)
        assert scans and not [s for s in scans if s["Node Type"] == "Seq Scan"], (case, plan)
        # Fast means few rows touched, not the whole table.
        touched = sum(s["Actual Rows"] * s.get("Actual Loops", 1) for s in scans)
        assert touched <= 10_000, (case, touched)
        rows = await conn.fetch(query, *args)
        assert 0 < len(rows) <= 50, case
        created = [r["created_at"] for r in rows]
        assert created == sorted(created, reverse=options["sort_desc"]), case


# -- list_workflow_steps --------------------------------------------------------------------


async def test_list_workflow_steps(dbos: DBOS) -> None:
    with SetWorkflowID("mixed"):
        assert await mixed() == "kid-a#1"
    steps = await DBOS.list_workflow_steps("mixed")
    assert [s.step_id for s in steps] == [0, 1, 2]
    assert steps[0].name.endswith("explode") and isinstance(steps[0].error, ValueError)
    assert str(steps[0].error) == "boom x" and steps[0].output is None
    assert steps[1].name == "DBOS.sleep" and isinstance(steps[1].output, float)
    assert steps[2].child_workflow_id == "mixed-2" and steps[2].name.endswith("three_steps")
    assert all(s.started_at is not None and s.completed_at is not None for s in steps)
    kid = await DBOS.list_workflow_steps("mixed-2")
    assert [s.output for s in kid] == ["kid-a#1", "kid-b#2", "kid-c#3"]
    with pytest.raises(WorkflowNotFoundError):
        await DBOS.list_workflow_steps("missing")


async def test_a_workflow_without_steps_lists_none(dbos: DBOS, conn: asyncpg.Connection) -> None:
    await _insert(conn, "empty", "ENQUEUED", "q", 1)
    assert await DBOS.list_workflow_steps("empty") == []


# -- restart and fork ---------------------------------------------------------------------


async def _snapshot(conn: asyncpg.Connection, wid: str) -> tuple[Any, ...]:
    row = await conn.fetchrow("SELECT * FROM workflow_status WHERE workflow_id = $1", wid)
    steps = await conn.fetch(
        "SELECT * FROM operation_outputs WHERE workflow_id = $1 ORDER BY step_id", wid
    )
    return dict(row or {}), [dict(s) for s in steps]


async def test_restart_runs_from_scratch_under_a_new_id(
    dbos: DBOS, conn: asyncpg.Connection
) -> None:
    assert await _run("orig", "r") == ["r-a#1", "r-b#2", "r-c#3"]
    before = await _snapshot(conn, "orig")
    handle = await DBOS.restart_workflow("orig")
    assert handle.workflow_id != "orig"
    assert await handle.get_result() == ["r-a#4", "r-b#5", "r-c#6"]
    assert calls == ["r-a", "r-b", "r-c"] * 2
    status = await handle.get_status()
    assert status.forked_from == "orig" and status.input == {"args": ["r"], "kwargs": {}}
    assert status.executor_id == "local" and status.queue_name is None
    assert await _snapshot(conn, "orig") == before


async def test_fork_reuses_the_steps_before_start_step(
    dbos: DBOS, conn: asyncpg.Connection
) -> None:
    assert await _run("orig", "f") == ["f-a#1", "f-b#2", "f-c#3"]
    before = await _snapshot(conn, "orig")
    handle = await DBOS.fork_workflow("orig", 2)
    assert await handle.get_result() == ["f-a#1", "f-b#2", "f-c#4"]
    assert calls == ["f-a", "f-b", "f-c", "f-c"]
    steps = await DBOS.list_workflow_steps(handle.workflow_id)
    assert [s.output for s in steps] == ["f-a#1", "f-b#2", "f-c#4"]
    assert (await handle.get_status()).forked_from == "orig"
    assert await _snapshot(conn, "orig") == before
    # Forking past the last step copies everything and runs nothing again.
    again = await dbos.fork_workflow("orig", 10)
    assert await again.get_result() == ["f-a#1", "f-b#2", "f-c#3"]
    assert len(calls) == 4


@DBOS.workflow()
async def publishes() -> None:
    await DBOS.set_event("early", 1)  # step 0
    await DBOS.write_stream("log", "first")  # step 1
    await note("published")  # step 2
    await DBOS.set_event("late", 2)
    await DBOS.write_stream("log", "second")
    await DBOS.close_stream("log")


async def test_fork_keeps_the_events_and_stream_entries_of_the_steps_it_copies(
    dbos: DBOS,
) -> None:
    with SetWorkflowID("publisher"):
        await publishes()
    fork = await DBOS.fork_workflow("publisher", 2)
    await fork.get_result(timeout=10)
    assert await DBOS.get_all_events(fork.workflow_id) == {"early": 1, "late": 2}
    assert [v async for v in DBOS.read_stream(fork.workflow_id, "log")] == ["first", "second"]


async def test_fork_under_a_chosen_id_is_idempotent(dbos: DBOS) -> None:
    await _run("orig", "i")
    with SetWorkflowID("fork-1"):
        first = await DBOS.fork_workflow("orig", 1)
    with SetWorkflowID("fork-1"):
        second = await DBOS.fork_workflow("orig", 1)
    assert first.workflow_id == second.workflow_id == "fork-1"
    assert await second.get_result() == ["i-a#1", "i-b#4", "i-c#5"]
    assert calls == ["i-a", "i-b", "i-c", "i-b", "i-c"]
    with SetWorkflowID("bad"):
        with pytest.raises(ValueError):
            await mixed_failing()
    with SetWorkflowID("bad"), pytest.raises(WorkflowConflictError):
        await DBOS.fork_workflow("orig", 0)


async def test_fork_for_another_version_is_enqueued_not_run(
    dbos: DBOS, conn: asyncpg.Connection
) -> None:
    await _run("orig", "v")
    handle = await DBOS.fork_workflow("orig", 1, application_version="v2")
    status = await handle.get_status()
    assert status.status is WorkflowStatusString.ENQUEUED
    assert status.queue_name == INTERNAL_QUEUE and status.app_version == "v2"
    assert status.executor_id is None and len(calls) == 3
    steps = await DBOS.list_workflow_steps(handle.workflow_id)
    assert [s.step_id for s in steps] == [0]


async def test_bad_fork_and_restart_requests(dbos: DBOS) -> None:
    await _run("orig", "b")
    with pytest.raises(ValueError, match="start_step"):
        await DBOS.fork_workflow("orig", -1)
    with pytest.raises(ValueError, match="start_step"):
        await DBOS.fork_workflow("orig", 2**31)
    with pytest.raises(ValueError, match="start_step"):
        await DBOS.fork_workflow("orig", "1")  # type: ignore[arg-type]
    with pytest.raises(WorkflowNotFoundError):
        await DBOS.fork_workflow("missing", 0)
    with pytest.raises(WorkflowNotFoundError):
        await DBOS.restart_workflow("missing")
    assert [s.workflow_id for s in await DBOS.list_workflows()] == ["orig"]


# -- delete ---------------------------------------------------------------------------------


async def _counts(conn: asyncpg.Connection, wids: list[str]) -> dict[str, int]:
    counts = {}
    for table, column in [
        ("workflow_status", "workflow_id"),
        ("operation_outputs", "workflow_id"),
        ("messages", "destination_id"),
        ("workflow_events", "workflow_id"),
        ("streams", "workflow_id"),
    ]:
        counts[table] = await conn.fetchval(
            f"SELECT count(*) FROM {table} WHERE {column} = ANY($1)", wids
        )
    return counts


async def _add_records(conn: asyncpg.Connection, wid: str) -> None:
    await conn.execute(
        "INSERT INTO messages (destination_id, topic, payload, created_at) VALUES ($1, '', '1', 1)",
        wid,
    )
    await conn.execute(
        "INSERT INTO workflow_events (workflow_id, key, value, updated_at)"
        " VALUES ($1, 'k', '1', 1)",
        wid,
    )
    await conn.execute(
        'INSERT INTO streams (workflow_id, key, "offset", value, created_at)'
        " VALUES ($1, 's', 0, '1', 1)",
        wid,
    )


async def test_delete_removes_everything_recorded_and_children_on_request(
    dbos: DBOS, conn: asyncpg.Connection
) -> None:
    with SetWorkflowID("parent"):
        await mixed()
    await _run("keep", "k")
    for wid in ("parent", "parent-2", "keep"):
        await _add_records(conn, wid)
    with SetWorkflowID("grandchild"):
        await three_steps("g")
    await conn.execute(
        "UPDATE workflow_status SET parent_workflow_id = 'parent-2'"
        " WHERE workflow_id = 'grandchild'"
    )
    await DBOS.delete_workflow("parent")
    assert set((await _counts(conn, ["parent"])).values()) == {0}
    assert (await _counts(conn, ["parent-2"]))["workflow_status"] == 1  # children kept
    with pytest.raises(WorkflowNotFoundError):
        await DBOS.delete_workflow("parent")
    await dbos.delete_workflow("parent-2", delete_children=True)
    assert set((await _counts(conn, ["parent-2", "grandchild"])).values()) == {0}
    assert await _counts(conn, ["keep"]) == {
        "workflow_status": 1,
        "operation_outputs": 3,
        "messages": 1,
        "workflow_events": 1,
        "streams": 1,
    }
    with pytest.raises(WorkflowNotFoundError):
        await DBOS.retrieve_workflow("parent")


async def test_deleting_a_running_workflow_interrupts_it(
    dbos: DBOS, conn: asyncpg.Connection
) -> None:
    with SetWorkflowID("running"):
        handle = await DBOS.start_workflow(blocked)
    await gate.wait()
    waiter = asyncio.create_task(handle.get_result(timeout=10))
    await asyncio.sleep(0)  # the waiter is waiting on the running task
    await DBOS.delete_workflow("running")
    with pytest.raises(WorkflowCancelledError):  # interrupted at once, not after 60 s
        await waiter
    assert (await _counts(conn, ["running"]))["workflow_status"] == 0
    with pytest.raises(WorkflowNotFoundError):  # and, now that it has stopped, gone
        await handle.get_result()


# -- hostile strings ----------------------------------------------------------------------


@pytest.mark.parametrize("wid", HOSTILE)
async def test_hostile_ids_round_trip_as_data(dbos: DBOS, wid: str) -> None:
    await _run(wid, wid[:10])
    listed = await DBOS.list_workflows(workflow_ids=[wid], name=three_steps.__dbos_entry__.name)  # type: ignore[attr-defined]
    assert [s.workflow_id for s in listed] == [wid]
    assert len(await DBOS.list_workflow_steps(wid)) == 3
    with SetWorkflowID("fork of " + wid[:1000]):
        fork = await DBOS.fork_workflow(wid, 1)
    assert (await fork.get_status()).forked_from == wid
    await fork.get_result()
    await DBOS.delete_workflow(wid)
    assert await DBOS.get_workflow_status(wid) is None
    assert (await DBOS.get_workflow_status(fork.workflow_id)) is not None


async def test_a_naive_datetime_filter_is_refused(dbos: DBOS) -> None:
    naive = datetime(2026, 1, 1)
    with pytest.raises(ValueError, match=r"start_time.*time zone"):
        await DBOS.list_workflows(start_time=naive)
    with pytest.raises(ValueError, match=r"end_time.*time zone"):
        await DBOS.list_queued_workflows(end_time=naive)
    assert await DBOS.list_workflows(start_time=naive.replace(tzinfo=UTC)) == []
