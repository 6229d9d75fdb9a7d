"""Concurrent branches inside a workflow replay exactly, whatever the timing."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Coroutine
from pathlib import Path

import anyio
import asyncpg
import pytest
from anyio.abc import TaskStatus

from dbos_async import DBOS, Queue, SetWorkflowID

delays: dict[str, float] = {}
ran: list[str] = []


async def _pause(key: str) -> None:
    await asyncio.sleep(delays.get(key, 0.0))


@DBOS.step()
async def a1() -> str:
    await _pause("a1")
    ran.append("a1")
    return "a1"


@DBOS.step()
async def a2() -> str:
    ran.append("a2")
    return "a2"


@DBOS.step()
async def b1() -> str:
    await _pause("b1")
    ran.append("b1")
    return "b1"


@DBOS.step()
async def b2() -> str:
    ran.append("b2")
    return "b2"


async def branch_a() -> list[str]:
    return [await a1(), await a2()]


async def branch_b() -> list[str]:
    return [await b1(), await b2()]


@DBOS.workflow()
async def two_branches() -> list[list[str]]:
    return list(await asyncio.gather(branch_a(), branch_b()))


@DBOS.step()
async def shared(branch: str, i: int) -> str:
    await _pause(f"{branch}{i}")
    ran.append(f"{branch}{i}")
    return f"{branch}{i}"


async def counting(branch: str) -> list[str]:
    return [await shared(branch, i) for i in range(3)]


@DBOS.workflow()
async def shared_step_branches() -> list[list[str]]:
    results = list(await asyncio.gather(counting("a"), counting("b")))
    await DBOS.set_event("branched", True)
    await DBOS.recv("go", timeout_seconds=30)
    return results


async def test_fork_of_the_issue_repro_replays_each_branch_its_own_steps(
    dbos: DBOS, conn: asyncpg.Connection
) -> None:
    delays.update(a1=0.05, b1=0.01)
    with SetWorkflowID("repro"):
        assert await two_branches() == [["a1", "a2"], ["b1", "b2"]]
    # Replay with the opposite timing: recorded steps return at once.
    delays.update(a1=0.0, b1=0.05)
    ran.clear()
    handle = await DBOS.fork_workflow("repro", 4)
    assert await handle.get_result(timeout=10) == [["a1", "a2"], ["b1", "b2"]]
    assert ran == []  # every step was recorded: none ran again
    steps = await DBOS.list_workflow_steps("repro")
    assert sorted((s.branch, s.step_id, s.name.rsplit(".", 1)[-1]) for s in steps) == [
        ("0", 0, "a1"),
        ("0", 1, "a2"),
        ("1", 0, "b1"),
        ("1", 1, "b2"),
    ]


async def test_cancel_and_resume_with_a_shared_step_function(dbos: DBOS) -> None:
    # First run: branch a is slow, so b's steps are recorded first.
    delays.clear()
    delays.update(a0=0.03, a1=0.03, a2=0.03)
    ran.clear()
    with SetWorkflowID("shared"):
        handle = await DBOS.start_workflow(shared_step_branches)
    assert await DBOS.get_event("shared", "branched", timeout_seconds=10) is True
    await DBOS.cancel_workflow("shared")
    # Replay with the opposite timing: recorded steps return at once.
    delays.clear()
    delays.update(b0=0.03, b1=0.03, b2=0.03)
    ran.clear()
    handle = await DBOS.resume_workflow("shared")
    await DBOS.send("shared", "go", topic="go")
    assert await handle.get_result(timeout=10) == [["a0", "a1", "a2"], ["b0", "b1", "b2"]]
    assert ran == []


# -- every way of creating branches, nested -------------------------------------------


@DBOS.step()
async def mark(label: str) -> str:
    await _pause(label)
    ran.append(label)
    return label


async def leaf(path: str, n: int) -> list[str]:
    return [await mark(f"{path}/{i}") for i in range(n)]


async def via_task_group(path: str) -> list[object]:
    async with asyncio.TaskGroup() as tg:
        first = tg.create_task(leaf(f"{path}.tg0", 2))
        second = tg.create_task(via_anyio(f"{path}.tg1"))
    return [first.result(), second.result()]


async def via_anyio(path: str) -> list[object]:
    results: dict[str, object] = {}

    async def run(key: str, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        results[key] = await leaf(f"{path}.{key}", 2)

    async with anyio.create_task_group() as tg:
        tg.start_soon(run, "soon")
        await tg.start(run, "start")
    return [results["soon"], results["start"]]


@DBOS.workflow()
async def every_structure() -> list[object]:
    head = await mark("root/0")
    task = asyncio.create_task(leaf("task", 3))
    future = asyncio.ensure_future(via_task_group("nested"))
    gathered = await asyncio.gather(leaf("g0", 2), leaf("g1", 1))
    return [head, await task, await future, gathered, await mark("root/1")]


async def test_every_structure_replays_under_reversed_timing(dbos: DBOS) -> None:
    delays.clear()
    ran.clear()
    with SetWorkflowID("structures"):
        first = await every_structure()
    first_ran = sorted(ran)
    # Reverse the timing: whatever finished first now finishes last.
    order = {label: i for i, label in enumerate(ran)}
    delays.update({label: 0.002 * (len(order) - i) for label, i in order.items()})
    ran.clear()
    replayed = await (await DBOS.fork_workflow("structures", 1000)).get_result(timeout=20)
    assert replayed == first
    assert ran == []
    steps = await DBOS.list_workflow_steps("structures")
    assert sorted(s.output for s in steps) == first_ran
    assert {s.branch for s in steps} == {"", "0", "1.0", "1.1.0", "1.1.1", "2", "3"}


# -- every kind of durable call inside a branch -----------------------------------------


@DBOS.transaction()
async def tx_insert(label: str) -> str:
    await DBOS.connection.execute("INSERT INTO public.tx_ledger (label) VALUES ($1)", label)
    ran.append(f"tx:{label}")
    return f"tx:{label}"


@DBOS.workflow()
async def child_wf(label: str) -> str:
    return await mark(f"child:{label}")


work_queue = Queue("branches_q")


async def everything(tag: str) -> list[object]:
    me = DBOS.workflow_id
    assert me is not None
    out: list[object] = [await mark(f"{tag}:step"), await tx_insert(tag)]
    out.append(await child_wf(tag))
    queued = await work_queue.enqueue(child_wf, f"q{tag}")
    await DBOS.send(me, f"hello-{tag}", topic=tag)
    out.append(await DBOS.recv(tag, timeout_seconds=10))
    await DBOS.set_event(tag, f"event-{tag}")
    out.append(await DBOS.get_event(me, tag, timeout_seconds=10))
    await DBOS.write_stream("s", f"{tag}-1")
    await DBOS.sleep(0.01)
    await DBOS.write_stream("s", f"{tag}-2")
    out.append(await queued.get_result(timeout=10))
    return out


@DBOS.workflow()
async def all_kinds() -> list[object]:
    results = list(await asyncio.gather(everything("a"), everything("b")))
    await DBOS.close_stream("s")
    await DBOS.set_event("branched", True)
    await DBOS.recv("finish", timeout_seconds=30)
    return results


@pytest.fixture
async def tx_ledger(conn: asyncpg.Connection) -> asyncpg.Connection:
    await conn.execute("CREATE TABLE public.tx_ledger (label text)")
    return conn


async def test_each_kind_of_call_in_branches_replays_exactly_once(
    dbos: DBOS, tx_ledger: asyncpg.Connection
) -> None:
    delays.clear()
    ran.clear()
    with SetWorkflowID("kinds"):
        handle = await DBOS.start_workflow(all_kinds)
    assert await DBOS.get_event("kinds", "branched", timeout_seconds=20) is True
    first_ran = sorted(ran)
    await DBOS.cancel_workflow("kinds")
    ran.clear()
    handle = await DBOS.resume_workflow("kinds")
    await DBOS.send("kinds", "done", topic="finish")
    expected = [
        [f"{t}:step", f"tx:{t}", f"child:{t}", f"hello-{t}", f"event-{t}", f"child:q{t}"]
        for t in "ab"
    ]
    assert await handle.get_result(timeout=20) == expected
    assert ran == []  # nothing ran twice: steps, transactions, children, queued work
    assert sorted(first_ran) == sorted(
        [f"{t}:step" for t in "ab"]
        + [f"tx:{t}" for t in "ab"]
        + [f"child:{t}" for t in "ab"]
        + [f"child:q{t}" for t in "ab"]
    )
    assert sorted(r[0] for r in await tx_ledger.fetch("SELECT label FROM public.tx_ledger")) == [
        "a",
        "b",
    ]
    values = [v async for v in DBOS.read_stream("kinds", "s")]
    assert sorted(values) == ["a-1", "a-2", "b-1", "b-2"]
    assert values.index("a-1") < values.index("a-2") and values.index("b-1") < values.index("b-2")
    # Children started in branches are named after the branch and the call.
    child = await DBOS.get_workflow_status("kinds-0:2")
    assert child is not None and child.parent_workflow_id == "kinds"


# -- fork on a branched history ----------------------------------------------------------


@DBOS.workflow()
async def forkable() -> list[object]:
    first = await mark("r0")  # position 0
    pair = await asyncio.gather(leaf("x", 2), leaf("y", 2))  # created at position 1
    second = await mark("r1")  # position 1
    late = asyncio.create_task(leaf("z", 1))  # created at position 2
    third = await mark("r2")  # position 2
    return [first, pair, second, await late, third]


async def test_fork_keeps_the_branches_created_before_the_start_step(dbos: DBOS) -> None:
    delays.clear()
    with SetWorkflowID("forkable"):
        expected = await forkable()
    for start_step, again in [
        (0, ["r0", "x/0", "x/1", "y/0", "y/1", "r1", "z/0", "r2"]),
        (1, ["r1", "z/0", "r2"]),
        (2, ["r2"]),
        (3, []),
    ]:
        ran.clear()
        fork = await DBOS.fork_workflow("forkable", start_step)
        assert await fork.get_result(timeout=10) == expected
        assert sorted(ran) == sorted(again), start_step


async def test_steps_are_listed_in_tree_order(dbos: DBOS) -> None:
    delays.clear()
    with SetWorkflowID("listed"):
        await forkable()
    steps = await DBOS.list_workflow_steps("listed")
    assert [(s.branch, s.step_id, s.output) for s in steps] == [
        ("", 0, "r0"),
        ("0", 0, "x/0"),
        ("0", 1, "x/1"),
        ("1", 0, "y/0"),
        ("1", 1, "y/1"),
        ("", 1, "r1"),
        ("2", 0, "z/0"),
        ("", 2, "r2"),
    ]


# -- histories recorded before branch IDs ------------------------------------------------

GOLDEN = Path(__file__).parents[1] / "golden" / "flat_history.json"


@DBOS.step(name="tests.golden.part")
async def golden_part(i: int) -> str:
    ran.append(f"part-{i}")
    return f"part-{i}"


async def golden_helper(i: int) -> str:
    return await golden_part(i)


@DBOS.workflow(name="tests.golden.flat_fan_out")
async def golden_flat_fan_out(n: int) -> list[str]:
    first = await golden_part(100)
    parts = await asyncio.gather(*(golden_helper(i) for i in range(n)))
    msg = await DBOS.recv("go", timeout_seconds=3600)
    last = await golden_part(200)
    return [first, *parts, msg, last]


async def test_a_history_recorded_with_flat_step_ids_still_replays(
    db_url: str, conn: asyncpg.Connection
) -> None:
    # Recorded by dbos_async at 245852c, the release before branch IDs: its
    # gathered helpers' steps hold step IDs 1-3 of one shared counter.
    golden = json.loads(await anyio.Path(GOLDEN).read_text())
    status = golden["workflow_status"]
    await conn.execute(
        "INSERT INTO workflow_status (workflow_id, status, name, inputs, app_name, "
        "app_version, executor_id, created_at, updated_at) "
        "VALUES ($1, $2, $3, $4, $5, 'test', $6, $7, $8)",
        *(status[k] for k in ("workflow_id", "status", "name", "inputs", "app_name")),
        *(status[k] for k in ("executor_id", "created_at", "updated_at")),
    )
    for row in golden["operation_outputs"]:
        if row["function_name"] == "DBOS.sleep":
            # recv's recorded deadline is absolute (an hour after recording): keep it ahead.
            row["output"] = json.dumps(time.time() + 3600)
        await conn.execute(
            "INSERT INTO operation_outputs VALUES ($1, $2, $3, $4, $5, $6, $7, $8)", *row.values()
        )
    ran.clear()
    async with DBOS(database_url=db_url, app_version="test") as dbos:  # recovers it
        await dbos.send("golden-flat", "go", topic="go")
        result = await (await dbos.retrieve_workflow("golden-flat")).get_result(timeout=10)
    assert result == ["part-100", "part-0", "part-1", "part-2", "go", "part-200"]
    assert ran == ["part-200"]  # the recorded steps replayed; only the last one ran


# -- the loop's task factory ---------------------------------------------------------------


async def test_a_task_factory_set_before_launch_is_kept_and_restored(db_url: str) -> None:
    loop = asyncio.get_running_loop()
    seen: list[asyncio.Task[object]] = []

    def factory(
        loop: asyncio.AbstractEventLoop, coro: Coroutine[object, object, object], **kw: object
    ) -> asyncio.Task[object]:
        task = asyncio.Task(coro, loop=loop, **kw)  # type: ignore[arg-type]
        seen.append(task)
        return task

    loop.set_task_factory(factory)  # type: ignore[arg-type]
    try:
        async with DBOS(database_url=db_url, app_version="test"):
            delays.clear()
            with SetWorkflowID("factory"):
                assert await two_branches() == [["a1", "a2"], ["b1", "b2"]]
            steps = await DBOS.list_workflow_steps("factory")
            assert {s.branch for s in steps} == {"0", "1"}
            assert len(seen) >= 2  # the branches went through the factory set before
        assert loop.get_task_factory() is factory  # put back at shutdown
    finally:
        loop.set_task_factory(None)


# -- a thousand concurrent branches ------------------------------------------------------


@DBOS.step()
async def tally(i: int, k: int) -> int:
    return 10 * i + k


async def two_tallies(i: int) -> int:
    return await tally(i, 1) + await tally(i, 2)


@DBOS.workflow()
async def thousand() -> list[int]:
    return list(await asyncio.gather(*(two_tallies(i) for i in range(1000))))


async def test_a_thousand_concurrent_branches_replay_their_own_steps(dbos: DBOS) -> None:
    expected = [20 * i + 3 for i in range(1000)]
    started = time.perf_counter()
    with SetWorkflowID("thousand"):
        assert await thousand() == expected
    first = time.perf_counter() - started
    started = time.perf_counter()
    fork = await DBOS.fork_workflow("thousand", 1)
    assert await fork.get_result(timeout=60) == expected
    replay = time.perf_counter() - started
    steps = await DBOS.list_workflow_steps(fork.workflow_id)
    assert len(steps) == 2000 and len({s.branch for s in steps}) == 1000
    # Reported, not asserted (speed is for the benchmarks): pytest -s shows it.
    ms = f"first run {first * 1000:.0f} ms, replay {replay * 1000:.0f} ms"
    print(f"\n1,000 branches x 2 steps: {ms}")


async def test_delete_removes_the_branch_steps_too(dbos: DBOS, conn: asyncpg.Connection) -> None:
    delays.clear()
    with SetWorkflowID("doomed"):
        await two_branches()
    assert await conn.fetchval("SELECT count(*) FROM branch_outputs") == 4
    await DBOS.delete_workflow("doomed")
    assert await conn.fetchval("SELECT count(*) FROM branch_outputs") == 0


async def test_work_queued_by_the_previous_release_runs_with_branch_ids(
    dbos: DBOS, conn: asyncpg.Connection
) -> None:
    # Enqueued before the upgrade (branched_steps keeps its default, false) and
    # never run: with no flat-numbered history to replay, it gets branch IDs.
    name = two_branches.__dbos_entry__.name  # type: ignore[attr-defined]
    await conn.execute(
        "INSERT INTO workflow_status (workflow_id, status, name, inputs, app_version,"
        " created_at, updated_at, queue_name, enqueue_seq)"
        " VALUES ('queued-before', 'ENQUEUED', $1, '{\"args\":[],\"kwargs\":{}}', 'test',"
        " 1, 1, '_dbos_internal', nextval('workflow_enqueue_seq'))",
        name,
    )
    await conn.execute("SELECT pg_notify(current_schema(), 'q:_dbos_internal')")
    delays.clear()
    handle = await DBOS.retrieve_workflow("queued-before")
    assert await handle.get_result(timeout=10) == [["a1", "a2"], ["b1", "b2"]]
    assert await conn.fetchval(
        "SELECT branched_steps FROM workflow_status WHERE workflow_id = 'queued-before'"
    )
    assert await conn.fetchval("SELECT count(*) FROM branch_outputs") == 4


@DBOS.workflow()
async def parent_of_branches() -> list[list[str]]:
    return await two_branches()


async def test_branches_inside_a_child_workflow(dbos: DBOS) -> None:
    delays.clear()
    delays.update(a1=0.03)
    with SetWorkflowID("parent-of-branches"):
        assert await parent_of_branches() == [["a1", "a2"], ["b1", "b2"]]
    child = "parent-of-branches-0"
    assert {s.branch for s in await DBOS.list_workflow_steps(child)} == {"0", "1"}
    delays.update(a1=0.0, b1=0.03)
    ran.clear()
    fork = await DBOS.fork_workflow(child, 1)
    assert await fork.get_result(timeout=10) == [["a1", "a2"], ["b1", "b2"]]
    assert ran == []


@DBOS.workflow()
async def branches_first() -> list[list[str]]:
    return list(await asyncio.gather(leaf("p", 1), leaf("q", 1)))  # before any call of its own


async def test_restart_runs_even_the_first_branches_again(dbos: DBOS) -> None:
    delays.clear()
    with SetWorkflowID("branches-first"):
        assert await branches_first() == [["p/0"], ["q/0"]]
    for again in (DBOS.restart_workflow, lambda wid: DBOS.fork_workflow(wid, 0)):
        ran.clear()
        handle = await again("branches-first")
        assert await handle.get_result(timeout=10) == [["p/0"], ["q/0"]]
        assert sorted(ran) == ["p/0", "q/0"]  # from scratch: nothing kept
    ran.clear()
    handle = await DBOS.fork_workflow("branches-first", 1)
    assert await handle.get_result(timeout=10) == [["p/0"], ["q/0"]]
    assert ran == []  # created before the workflow's first own call: kept


@DBOS.workflow()
async def two_children() -> list[str]:
    return list(await asyncio.gather(child_wf("c0"), child_wf("c1")))


async def test_a_child_whose_start_a_cancel_interrupts_still_runs(dbos: DBOS, db_url: str) -> None:
    # Both children's rows are held back by uncommitted rows of the same IDs,
    # so the parent is cancelled while they are being written; one of them is
    # written by the group commit's drain, after its starter was cancelled.
    blocker = await asyncpg.connect(db_url, server_settings={"search_path": "dbos_async"})
    try:
        tx = blocker.transaction()
        await tx.start()
        for child in ("two-children-0", "two-children-1"):
            await blocker.execute(
                "INSERT INTO workflow_status (workflow_id, status, name, created_at,"
                " updated_at) VALUES ($1, 'PENDING', 'x', 0, 0)",
                child,
            )
        with SetWorkflowID("two-children"):
            handle = await DBOS.start_workflow(two_children)
        with pytest.raises(TimeoutError):  # both starts wait behind the blocker
            await handle.get_result(timeout=0.5)
        await DBOS.cancel_workflow("two-children")
        await tx.rollback()
    finally:
        await blocker.close()
    handle = await DBOS.resume_workflow("two-children")
    assert await handle.get_result(timeout=10) == ["child:c0", "child:c1"]


def test_branches_replay_on_uvloop(db_url: str) -> None:
    # uvloop's loop creates tasks in C; its task factory slot is the same.
    uvloop = pytest.importorskip("uvloop")

    async def scenario() -> None:
        assert type(asyncio.get_running_loop()).__module__.startswith("uvloop")
        async with DBOS(database_url=db_url, app_version="test"):
            delays.clear()
            delays.update(a1=0.03)
            with SetWorkflowID("on-uvloop"):
                assert await two_branches() == [["a1", "a2"], ["b1", "b2"]]
            delays.update(a1=0.0, b1=0.03)
            ran.clear()
            fork = await DBOS.fork_workflow("on-uvloop", 1)
            assert await fork.get_result(timeout=10) == [["a1", "a2"], ["b1", "b2"]]
            assert ran == []
            steps = await DBOS.list_workflow_steps("on-uvloop")
            assert {s.branch for s in steps} == {"0", "1"}

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(scenario())
