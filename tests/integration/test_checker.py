"""The replay checker (issue 10, item 4): recorded histories against today's code, no effects."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from pathlib import Path

import anyio
import asyncpg
import pytest

from dbos_async import DBOS, SerializationError, SetWorkflowID, WorkflowStatusString
from dbos_async.checker import check_histories, check_workflows
from dbos_async.history import RecordedCall, WorkflowHistory, read_histories
from tests.integration.test_cli import dbos_cli
from tests.integration.test_history import other_url  # noqa: F401 - a fixture

# What `dbos-async workflow check --app tests.integration.test_checker:app` loads.
app = DBOS(app_name="checker", app_version="test")

ledger: list[str] = []


@DBOS.step(name="tc.one")
async def one(n: int) -> int:
    ledger.append(f"one {n}")
    return n


@DBOS.step(name="tc.two")
async def two(n: int) -> int:
    ledger.append(f"two {n}")
    return n * 2


@DBOS.step(name="tc.audit")
async def audit(n: int) -> int:
    ledger.append(f"audit {n}")
    return n


@dataclasses.dataclass
class Receipt:
    amount: int


@DBOS.step(name="tc.number")
async def number() -> Receipt:
    return Receipt(5)


@DBOS.workflow(name="tc.flow")
async def flow(n: int) -> int:
    return await one(n) + await two(n)


@DBOS.workflow(name="tc.waits")
async def waits(n: int) -> int:
    first = await one(n)
    await DBOS.recv("go", timeout_seconds=3600)
    return first + await two(n)


@DBOS.workflow(name="tc.waits_v2")
async def waits_v2(n: int) -> int:  # waits with a step inserted before the recv
    first = await one(n)
    await audit(n)
    await DBOS.recv("go", timeout_seconds=3600)
    return first + await two(n)


async def fan(n: int) -> int:
    return await one(n) + await two(n)


@DBOS.workflow(name="tc.branches")
async def branches() -> list[int]:
    return list(await asyncio.gather(fan(1), fan(2)))


@DBOS.workflow(name="tc.sleepy")
async def sleepy() -> int:
    await DBOS.sleep(3600)
    return await one(7)


@DBOS.workflow(name="tc.parent")
async def parent() -> int:
    child = await DBOS.start_workflow(flow, 3)
    return await child.get_result() + await one(1)


@DBOS.workflow(name="tc.counts")
async def counts() -> int:
    return (await number()).amount


@DBOS.step(name="tc.sloppy")
async def sloppy() -> str:
    return None  # type: ignore[return-value] # Python checks no annotation


@DBOS.workflow(name="tc.uses_sloppy")
async def uses_sloppy(order_id: str) -> list[object]:
    return [order_id, await sloppy()]


async def branch_a() -> None:
    await one(1)
    await one(2)


async def branch_b(v2: bool) -> None:
    await one(3)
    await (audit(4) if v2 else two(4))


@DBOS.workflow(name="tc.group")
async def group() -> None:
    async with asyncio.TaskGroup() as tasks:
        tasks.create_task(branch_a())
        tasks.create_task(branch_b(False))


@DBOS.workflow(name="tc.group_v2")
async def group_v2() -> None:
    async with asyncio.TaskGroup() as tasks:
        tasks.create_task(branch_a())
        tasks.create_task(branch_b(True))


@DBOS.workflow(name="tc.catches_v2")
async def catches_v2(n: int) -> int:  # flow, with its first step swapped, the error caught
    try:
        first = await audit(n)
    except Exception:
        first = await one(n)
    return first + await two(n)


@DBOS.workflow(name="tc.raises_v2")
async def raises_v2(n: int) -> int:  # flow, reading what the old step never returned
    first = await one(n)
    return {"n": first}["tax"] + await two(n)


@DBOS.workflow(name="tc.patched_v2")
async def patched_v2(n: int) -> int:  # flow, with a step appended behind a patch
    total = await one(n) + await two(n)
    if await DBOS.patch("audit"):
        total += await audit(n)
    return total


def _renamed(history: WorkflowHistory, index: int, name: str) -> WorkflowHistory:
    calls = list(history.calls)
    calls[index] = dataclasses.replace(calls[index], function_name=name)
    return dataclasses.replace(history, calls=tuple(calls))


async def test_a_history_the_code_replays_is_compatible_and_nothing_runs(dbos: DBOS) -> None:
    with SetWorkflowID("ok"):
        assert await flow(4) == 12
    with SetWorkflowID("tree"):
        assert await branches() == [3, 6]
    with SetWorkflowID("parent"):
        assert await parent() == 10
    histories = await read_histories(
        dbos._runtime.pool, ["ok", "tree", "parent"], with_children=True
    )
    ledger.clear()
    results = {r.workflow_id: r for r in await check_histories(histories)}
    assert ledger == []  # served from the record: no step body ran
    for workflow_id in ("ok", "tree", "parent"):
        result = results[workflow_id]
        assert result.compatible and result.problem is None and result.stopped is None, result
    assert results["ok"].replayed == 2 and results["tree"].replayed == 4
    assert results["parent"].summary() == "parent (tc.parent, SUCCESS): compatible"


async def test_divergences_are_named_with_their_position(dbos: DBOS) -> None:
    with SetWorkflowID("ok"):
        await flow(1)
    with SetWorkflowID("tree"):
        await branches()
    ok, tree = await read_histories(dbos._runtime.pool, ["ok", "tree"])
    other = _renamed(ok, 1, "tc.other")
    longer = dataclasses.replace(
        ok, calls=(*ok.calls, RecordedCall(branch="", step_id=2, origin=None, function_name="x.y"))
    )
    in_branch = _renamed(tree, [c.branch for c in tree.calls].index("1") + 1, "tc.other")
    # A finished execution whose code now makes one more call than it recorded.
    shorter = dataclasses.replace(ok, calls=ok.calls[:1])
    results = await check_histories([other, longer, in_branch, shorter])
    assert [r.problem for r in results] == [
        "diverges at step 1: recorded tc.other, code calls tc.two",
        "diverges at step 2: recorded x.y, code makes no call there",
        "diverges at branch 1 step 1: recorded tc.other, code calls tc.two",
        "diverges at step 1: code calls tc.two, where the finished execution made no call",
    ]
    assert not any(r.compatible for r in results)
    unknown = dataclasses.replace(ok, workflow=dataclasses.replace(ok.workflow, name="gone.wf"))
    [missing] = await check_histories([unknown])
    assert (
        missing.problem == "the workflow function 'gone.wf' is not registered in the checked code"
    )


async def test_a_pending_history_is_checked_up_to_its_end(
    dbos: DBOS, conn: asyncpg.Connection
) -> None:
    with SetWorkflowID("waiting"):
        handle = await dbos.start_workflow(waits, 1)
    with SetWorkflowID("sleeping"):
        await dbos.start_workflow(sleepy)
    # Recorded: its first step, and its recv's deadline (the recv itself waits).
    recorded = "SELECT count(*) FROM operation_outputs WHERE workflow_id IN ('waiting', 'sleeping')"
    async with asyncio.timeout(10):
        while await conn.fetchval(recorded) < 3:  # noqa: ASYNC110 - nothing announces a step
            await asyncio.sleep(0.01)
    before = await conn.fetch("SELECT * FROM operation_outputs ORDER BY 1, 2")
    results = {r.workflow_id: r for r in await check_workflows(dbos._runtime.pool)}
    assert await conn.fetch("SELECT * FROM operation_outputs ORDER BY 1, 2") == before
    waiting, sleeping = results["waiting"], results["sleeping"]
    assert waiting.compatible and waiting.stopped == "the history ends at step 1", waiting
    # The recorded hour-long sleep is not waited out: the replay reaches the step after it.
    assert sleeping.compatible and sleeping.stopped == "the history ends at step 1", sleeping
    # Code with a step inserted before the unfinished recv diverges, though the
    # inserted step is where the record ends.
    [history] = await read_histories(dbos._runtime.pool, ["waiting"])
    v2 = dataclasses.replace(
        history, workflow=dataclasses.replace(history.workflow, name="tc.waits_v2")
    )
    [diverged] = await check_histories([v2])
    assert diverged.problem == (
        "diverges at step 1: code calls tc.audit, where the history has an unfinished call "
        "and goes on (recorded DBOS.sleep at step 2)"
    ), diverged
    await dbos.send("waiting", "go", topic="go")
    assert await handle.get_result(timeout=10) == 3


async def test_output_drift_is_reported_and_refused_at_runtime(
    db_url: str, conn: asyncpg.Connection
) -> None:
    # A history recorded when tc.number returned another shape; Receipt has changed since.
    await conn.execute(
        "INSERT INTO workflow_status (workflow_id, status, name, inputs, app_version,"
        " executor_id, created_at, updated_at, branched_steps)"
        " VALUES ('drifted', 'PENDING', 'tc.counts', '{\"args\": [], \"kwargs\": {}}', 'test',"
        " 'local', 1, 1, true)"
    )
    await conn.execute(
        "INSERT INTO operation_outputs (workflow_id, step_id, function_name, output)"
        " VALUES ('drifted', 0, 'tc.number', '{\"total\": 5}')"
    )
    async with DBOS(database_url=db_url, app_version="other") as dbos:  # checks, runs nothing
        [result] = await check_workflows(dbos._runtime.pool)
    assert not result.compatible and len(result.drift) == 1
    assert result.drift[0].startswith(
        'step 0 (tc.number): the recorded value {"total": 5} does not validate as Receipt'
    ), result.drift
    # A runtime of its version (and executor) recovers it at launch, and
    # refuses the value clearly, instead of returning raw JSON.
    async with DBOS(database_url=db_url, app_version="test") as dbos:
        handle = await dbos.retrieve_workflow("drifted")
        with pytest.raises(
            SerializationError, match=r'value \{"total": 5\} does not validate as Receipt'
        ):
            await handle.get_result(timeout=10)
    status = await conn.fetchval("SELECT status FROM workflow_status WHERE workflow_id = 'drifted'")
    assert status == WorkflowStatusString.ERROR


async def test_the_command_checks_files_and_databases_and_exits_1_on_a_divergence(
    dbos: DBOS, tmp_path: Path
) -> None:
    with SetWorkflowID("ok"):
        await flow(2)
    exported = await dbos_cli("workflow", "export", "ok", url=dbos.database_url)
    assert exported.code == 0, exported
    good = anyio.Path(tmp_path / "good.json")
    await good.write_text(exported.out)
    document = json.loads(exported.out)
    document["workflows"][0]["calls"][1]["function_name"] = "tc.other"
    bad = anyio.Path(tmp_path / "bad.json")
    await bad.write_text(json.dumps(document))
    spec = ("--app", "tests.integration.test_checker:app")
    passed = await dbos_cli("workflow", "check", *spec, "--file", str(good))
    assert passed.code == 0, passed
    assert passed.out.splitlines() == [
        "ok (tc.flow, SUCCESS): compatible",
        "1 compatible, 0 incompatible",
    ]
    failed = await dbos_cli("workflow", "check", *spec, "--file", str(good), "--file", str(bad))
    assert failed.code == 1, failed
    assert "ok (tc.flow, SUCCESS): diverges at step 1: recorded tc.other, code calls tc.two" in (
        failed.out
    )
    from_db = await dbos_cli(
        "workflow", "check", *spec, "--status", "SUCCESS", "--json", url=dbos.database_url
    )
    assert from_db.code == 0, from_db
    [row] = from_db.json()  # type: ignore[misc]
    assert row["workflow_id"] == "ok" and row["compatible"] is True and row["replayed"] == 2
    wrong = await dbos_cli("workflow", "check", "--app", "no_such_module:app", "--file", str(good))
    assert wrong.code == 1 and "cannot import no_such_module" in wrong.err, wrong


async def test_export_import_check_round_trips(
    dbos: DBOS,
    other_url: str,  # noqa: F811 - the fixture imported above
    tmp_path: Path,
) -> None:
    with SetWorkflowID("ok"):
        await flow(5)
    with SetWorkflowID("tree"):
        await branches()
    exported = await dbos_cli("workflow", "export", "ok", "tree", url=dbos.database_url)
    assert exported.code == 0, exported
    histories = anyio.Path(tmp_path / "histories.json")
    await histories.write_text(exported.out)
    imported = await dbos_cli("workflow", "import", str(histories), url=other_url)
    assert imported.code == 0, imported
    spec = ("--app", "tests.integration.test_checker:app")
    expected = [
        "2 compatible, 0 incompatible",
        "ok (tc.flow, SUCCESS): compatible",
        "tree (tc.branches, SUCCESS): compatible",
    ]
    in_database = await dbos_cli("workflow", "check", *spec, "-s", "SUCCESS", url=other_url)
    assert in_database.code == 0 and sorted(in_database.out.splitlines()) == expected, in_database
    in_file = await dbos_cli("workflow", "check", *spec, "--file", str(histories))
    assert in_file.code == 0 and sorted(in_file.out.splitlines()) == expected, in_file


def _as(history: WorkflowHistory, name: str, **changes: object) -> WorkflowHistory:
    """The history, checked as workflow ``name`` (the next release's code)."""
    workflow = dataclasses.replace(history.workflow, name=name, **changes)  # type: ignore[arg-type]
    return dataclasses.replace(history, workflow=workflow)


async def test_no_false_compatible_verdicts(dbos: DBOS) -> None:
    # The review of the first checker found each of these called "compatible".
    with SetWorkflowID("ok"):
        await flow(2)
    with SetWorkflowID("group"):
        await group()
    with SetWorkflowID("parent"):
        await parent()
    pool = dbos._runtime.pool
    ok, group_history, parent_history = await read_histories(pool, ["ok", "group", "parent"])
    pending = {"status": WorkflowStatusString.PENDING}
    # One branch ends its history (a crash) while another diverges.
    cut = dataclasses.replace(
        group_history,
        calls=tuple(c for c in group_history.calls if (c.branch, c.step_id) != ("0", 1)),
    )
    # The code catches the divergence and goes on; it raises a new error; the
    # parent's child is not among the histories checked.
    results = await check_histories(
        [
            _as(cut, "tc.group_v2", **pending),
            _as(ok, "tc.catches_v2", **pending),
            _as(ok, "tc.raises_v2"),
            parent_history,
        ]
    )
    assert [r.problem for r in results] == [
        "diverges at branch 1 step 1: recorded tc.two, code calls tc.audit",
        "diverges at step 0: recorded tc.one, code calls tc.audit",
        "the code raises KeyError('tax') replaying the history",
        "not checked past the calls replayed so far: it needs the runtime's 'listener', "
        "which a check does not serve",
    ]
    assert not any(r.compatible for r in results)
    # A step appended behind a patch at the end of a finished history is how new code
    # should go: compatible.
    [patched] = await check_histories([_as(ok, "tc.patched_v2")])
    assert patched.compatible and patched.stopped == "the history ends at step 2", patched


async def test_unchanged_code_with_loose_annotations_still_recovers(
    db_url: str, conn: asyncpg.Connection
) -> None:
    # A step annotated `-> str` that returned None, and a workflow's `str`
    # argument recorded as 42: Python checks neither, so neither may fail the
    # replay of code that did not change (only a class annotation is strict).
    await conn.execute(
        "INSERT INTO workflow_status (workflow_id, status, name, inputs, app_version,"
        " executor_id, created_at, updated_at, branched_steps)"
        " VALUES ('loose', 'PENDING', 'tc.uses_sloppy', '{\"args\": [42], \"kwargs\": {}}',"
        " 'test', 'local', 1, 1, true)"
    )
    await conn.execute(
        "INSERT INTO operation_outputs (workflow_id, step_id, function_name, output)"
        " VALUES ('loose', 0, 'tc.sloppy', 'null')"
    )
    async with DBOS(database_url=db_url, app_version="test") as dbos:
        handle = await dbos.retrieve_workflow("loose")
        assert await handle.get_result(timeout=10) == [42, None]
