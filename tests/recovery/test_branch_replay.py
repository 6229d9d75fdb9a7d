"""Random trees of concurrent branches replay exactly, whatever the timing (property-based).

Hypothesis draws a tree of branches (depth <= 3, fan-out <= 4, 0-4 durable
calls of mixed kinds per branch, children created by gather, create_task,
asyncio.TaskGroup, anyio start_soon or anyio start, optionally while the
parent goes on making calls), two timing tables (how long each body and the
plain code before each call take; not part of the recorded input) and an
interruption point. Each example runs the workflow, interrupts it, re-times
every call and replays it: cancel once k ledger rows exist, then resume
(in-process); SIGKILL a subprocess once k ledger rows exist, then recover in
another; or fork an uninterrupted run at a position of the root sequence.

Then: the result is the one the tree predicts; so is the recorded history
((branch, step_id) -> function, output, origin); every step or transaction
recorded at the interruption ran exactly once in all; nothing ran that the
tree lacks; sends, events and stream writes happened once; a fork ran none
of the calls it copied and each other one once.

Each example is printed and noted (tree, both timings, interruption point),
with the blob for ``@reproduce_failure``. 12 examples per in-process test and
4 SIGKILL ones by default; ``DBOS_REPLAY_EXAMPLES=N`` runs N per in-process
test (and N // 7, at least 4, SIGKILL ones); ``DBOS_REPLAY_KILL_EXAMPLES=M``
sets the SIGKILL count alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Collection
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import anyio
import asyncpg
import branch_app
import pytest
from child import Child
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

from dbos_async import DBOS, SetWorkflowID
from dbos_async.errors import WorkflowCancelledError

APP = Path(__file__).with_name("branch_app.py")
# Each kind of call a branch draws, and the function name its checkpoint records.
NAMES = dict(
    step=branch_app.STEP, tx=branch_app.TX, sleep="DBOS.sleep", event="DBOS.set_event",
    getev="DBOS.get_event", stream="DBOS.write_stream", now="DBOS.now", rand="DBOS.random",
    uuid="DBOS.uuid4", child=branch_app.LEAF, send="DBOS.send", recv="DBOS.recv",
    enqueue=branch_app.LEAF,
)  # fmt: skip
CALLS = tuple(NAMES)
MODES = ("gather", "task", "taskgroup", "anyio", "anyio_start")
EXAMPLES = int(os.environ.get("DBOS_REPLAY_EXAMPLES", "12"))
KILL_DEFAULT = max(4, EXAMPLES // 7) if "DBOS_REPLAY_EXAMPLES" in os.environ else 4
KILL_EXAMPLES = int(os.environ.get("DBOS_REPLAY_KILL_EXAMPLES", KILL_DEFAULT))
Ops = list[dict[str, Any]]  # a branch: its calls and spawns, in program order
Timing = dict[str, float]  # label -> seconds (see branch_app.delays)
STUCK = 20  # seconds: a run takes at most a few; longer means a workflow waits forever


def replay_settings(examples: int) -> settings:
    # database=None: no example store, so CI runs are not stateful. The
    # function-scoped fixture (one database per test) is shared on purpose:
    # every example uses its own workflow IDs and ledger keys.
    return settings(
        max_examples=examples,
        deadline=None,
        database=None,
        print_blob=True,
        derandomize=False,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )


# -- the tree and what it predicts ------------------------------------------------------


def _pair(ops: Ops) -> None:
    """Point each recv at an earlier unreceived send, each getev at an earlier event.

    One without a partner becomes that partner instead, so every tree is valid.
    """
    sends: list[int] = []
    event: int | None = None
    for i, op in enumerate(ops):
        if op["k"] == "recv" and not sends:
            op["k"] = "send"
        if op["k"] == "getev" and event is None:
            op["k"] = "event"
        if op["k"] == "send":
            sends.append(i)
        elif op["k"] == "event":
            event = i
        elif op["k"] == "recv":
            op["ref"] = sends.pop(0)
        elif op["k"] == "getev":
            op["ref"] = event


@st.composite
def trees(draw: st.DrawFn) -> Ops:
    # Branches besides the root: at least one (the subject here), at most 12 (fast examples).
    budget = [draw(st.integers(1, 12))]

    def branch(depth: int) -> Ops:
        kinds = draw(st.lists(st.sampled_from(CALLS), min_size=int(depth == 0), max_size=4))
        ops: Ops = [{"k": k} for k in kinds]
        kids = 0
        if depth < 3 and budget[0] > 0:
            kids = draw(st.integers(int(depth == 0), min(4, budget[0])))
            budget[0] -= kids
        while kids:
            size = draw(st.integers(1, kids))
            kids -= size
            op: dict[str, Any] = {
                "k": "spawn",
                "how": draw(st.sampled_from(MODES)),
                "overlap": draw(st.booleans()),
                "kids": [branch(depth + 1) for _ in range(size)],
            }
            if op["how"] == "anyio_start":
                op["at"] = [draw(st.integers(0, len(kid))) for kid in op["kids"]]
            ops.insert(draw(st.integers(0, len(ops))), op)
        _pair(ops)
        return ops

    return branch(0)


@dataclass(frozen=True)
class Expected:
    """One durable call the tree makes: where it must be recorded, and what."""

    label: str
    kind: str
    branch: str
    index: int  # position of the op in its branch: names its event and topic
    step_id: int
    origin: int
    output: Any  # the recorded output, decoded; None when it records none


WILD = object()  # a recorded value the tree cannot know (now, random, a sleep's wake-up time)


@dataclass
class Model:
    calls: dict[tuple[str, int], Expected] = field(default_factory=dict)
    timers: set[tuple[str, int]] = field(default_factory=set)  # recv/get_event deadlines
    result: list[Any] = field(default_factory=list)
    ledger: dict[str, str] = field(default_factory=dict)  # label -> the call that runs it
    timed: list[str] = field(default_factory=list)  # keys of the timing table
    root_calls: int = 0
    fork_points: list[int] = field(default_factory=list)

    def copied(self, start_step: int) -> set[str]:
        """Labels of the calls fork_workflow(id, start_step) copies (0006_branches.sql).

        README: "fork_workflow(id, 0) keeps nothing" (restart_workflow is that fork).
        """
        if start_step == 0:
            return set()
        return {
            c.label
            for c in self.calls.values()
            if (c.step_id < start_step if c.branch == "" else c.origin <= start_step)
        }


def model_of(tree: Ops) -> Model:
    model = Model()

    def walk(path: str, ops: Ops, origin: int) -> list[Any]:
        step_id = kids = 0
        out: list[Any] = []
        for i, op in enumerate(ops):
            kind = op["k"]
            label = f"{path}/{i}:{kind}"
            model.timed.append(label + "^")
            if kind == "spawn":
                results = []
                for kid in op["kids"]:
                    kid_path = f"{path}.{kids}" if path else str(kids)
                    kids += 1
                    # A top-level branch's origin: how many calls the root had made.
                    results.append(walk(kid_path, kid, step_id if path == "" else origin))
                out.append(results)
                continue
            ref = f"{path}/{op.get('ref')}:{'send' if kind == 'recv' else 'event'}"
            output, value = {
                "step": (label, label),
                "tx": (label, label),
                "sleep": (WILD, label),
                "getev": (ref, ref),
                "recv": (ref, ref),
                "now": (WILD, ["now", label, WILD]),
                "rand": (WILD, ["rand", label, WILD]),
                "uuid": (WILD, ["uuid", label, WILD]),
                "child": (None, f"{label}/s"),
                "enqueue": (None, f"{label}/s"),
                # The checkpoints of writes name what they wrote (a fork copies it);
                # a stream offset depends on how the branches' writes interleaved.
                "event": ({"key": f"e{path}_{i}", "value": label}, label),
                "stream": (WILD, label),
            }.get(kind, (None, label))
            model.calls[(path, step_id)] = Expected(
                label, kind, path, i, step_id, step_id if path == "" else origin, output
            )
            if kind in ("step", "tx", "sleep"):
                model.timed.append(label)
            if kind in ("step", "tx"):
                model.ledger[label] = label
            if kind in ("child", "enqueue"):
                model.ledger[f"{label}/s"] = label
                model.timed.append(f"{label}/s")
            step_id += 1
            if kind in ("getev", "recv"):  # a second identity: its recorded deadline
                model.timers.add((path, step_id))
                step_id += 1
            out.append(value)
        if path == "":
            model.root_calls = step_id
        return out

    model.result = walk("", tree, 0)
    # Fork points that split no send/recv or event/get_event pair of the root:
    # a copied send or set_event was written for the original, not the fork.
    root = [c for c in model.calls.values() if c.branch == ""]
    pairs = [
        (next(p.step_id for p in root if p.label == c.output), c.step_id)
        for c in root
        if c.kind in ("recv", "getev")
    ]
    model.fork_points = [
        k for k in range(model.root_calls + 1) if not any(a < k <= b for a, b in pairs)
    ]
    return model


class Scenario:  # not a dataclass: Hypothesis prints those field by field, model included
    def __init__(self, tree: Ops, first: Timing, second: Timing, point: int) -> None:
        self.tree, self.model = tree, model_of(tree)
        self.first = first  # the timing table of the first run
        self.second = second  # of the replay, drawn again
        self.point = point  # ledger rows before the interruption, or the fork's start_step

    def __repr__(self) -> str:  # what Hypothesis prints for a failing example
        return f"Scenario(<{self.describe()}>)"

    def describe(self) -> str:
        return (
            f"tree={json.dumps(self.tree, separators=(',', ':'))}\n"
            f"first timing={json.dumps(self.first)}\nsecond timing={json.dumps(self.second)}\n"
            f"point={self.point}"
        )


@st.composite
def scenarios(draw: st.DrawFn, fork: bool = False) -> Scenario:
    tree = draw(trees())
    model = model_of(tree)
    keys = sorted(set(model.timed))
    first = draw(st.lists(st.integers(0, 20), min_size=len(keys), max_size=len(keys)))
    second = draw(st.lists(st.integers(0, 20), min_size=len(keys), max_size=len(keys)))
    if second == first:  # the replay must be re-timed
        second = [(ms + 7) % 21 for ms in first]
    points = st.sampled_from(model.fork_points) if fork else st.integers(0, len(model.ledger))
    point = draw(points)  # a fork's start_step, else ledger rows before the interruption
    scenario = Scenario(
        tree,
        {k: ms / 1000 for k, ms in zip(keys, first, strict=True)},
        {k: ms / 1000 for k, ms in zip(keys, second, strict=True)},
        point,
    )
    note(scenario.describe())
    print(scenario.describe().replace("\n", " | "))  # shown by pytest for a failing test
    return scenario


# -- checks -----------------------------------------------------------------------------

LEDGER_TABLE = (
    "CREATE TABLE IF NOT EXISTS public.ledger (workflow_id text NOT NULL, label text NOT NULL, "
    "token text NOT NULL, at timestamptz DEFAULT clock_timestamp(), "
    "PRIMARY KEY (workflow_id, label, token))"
)
# A workflow and its children (whose IDs extend the parent's with '-').
FAMILY = "(workflow_id = $1 OR starts_with(workflow_id, $1 || '-'))"
ROWS = f"""
SELECT workflow_id, '' AS branch, step_id, step_id AS origin, function_name, output, error,
       child_workflow_id
FROM dbos_async.operation_outputs WHERE {FAMILY}
UNION ALL
SELECT workflow_id, branch, step_id, origin, function_name, output, error, child_workflow_id
FROM dbos_async.branch_outputs WHERE {FAMILY}
"""
RUNS_BODIES = (branch_app.STEP, branch_app.TX, branch_app.LEAF_STEP)


def matches(expected: Any, actual: Any, captured: dict[str, Any]) -> bool:
    """Whether a result is the expected one; now/random values are captured by label."""
    if isinstance(expected, list) and len(expected) == 3 and expected[2] is WILD:
        if not isinstance(actual, list) or actual[:2] != expected[:2] or len(actual) != 3:
            return False
        captured[expected[1]] = actual[2]
        return True
    if isinstance(expected, list):
        return (
            isinstance(actual, list)
            and len(actual) == len(expected)
            and all(matches(e, a, captured) for e, a in zip(expected, actual, strict=True))
        )
    return bool(expected == actual)


async def recorded_bodies(conn: asyncpg.Connection, workflow_id: str) -> set[str]:
    """Labels of the steps and transactions (children's too) recorded as completed now."""
    rows = await conn.fetch(ROWS, workflow_id)
    return {
        json.loads(r["output"])
        for r in rows
        if r["function_name"] in RUNS_BODIES and r["error"] is None and r["output"] is not None
    }


async def check_history(
    conn: asyncpg.Connection, workflow_id: str, model: Model, captured: dict[str, Any]
) -> dict[tuple[str, int], Any]:
    """The recorded calls are exactly the tree's, each at its own (branch, step_id)."""
    rows = await conn.fetch(ROWS, workflow_id)
    own = {(r["branch"], r["step_id"]): r for r in rows if r["workflow_id"] == workflow_id}
    outputs = {key: r["output"] for key, r in own.items()}
    children: dict[str, str] = {}
    for key, call in model.calls.items():
        row = own.pop(key, None)
        assert row is not None, f"{call.label} is not recorded at {key}"
        where = f"{call.label} recorded at {key}: {dict(row)}"
        assert row["function_name"] == NAMES[call.kind], where
        assert row["origin"] == call.origin and row["error"] is None, where
        value = None if row["output"] is None else json.loads(row["output"])
        if call.kind == "now":  # the branch got back its own value, not another's
            assert datetime.fromisoformat(value) == datetime.fromisoformat(captured[call.label])
        elif call.kind in ("rand", "uuid"):
            assert value == captured[call.label], where
        elif call.kind == "stream":
            assert value["key"] == "s" and isinstance(value["offset"], int), where
        elif call.output is not WILD:
            assert value == call.output, where
        if call.kind in ("child", "enqueue"):
            assert row["child_workflow_id"], where
            children[row["child_workflow_id"]] = call.label
    extra = {key: r["function_name"] for key, r in own.items()}
    assert all(k in model.timers and n == "DBOS.sleep" for k, n in extra.items()), extra
    # Each child workflow ran one leaf, recorded once; no other workflow joined the family.
    family = {r["workflow_id"] for r in rows} - {workflow_id}
    assert family == {c for c in children if c.startswith(workflow_id + "-")}, family
    for child in family:
        got = [
            (r["branch"], r["step_id"], r["function_name"], json.loads(r["output"]))
            for r in rows
            if r["workflow_id"] == child
        ]
        assert got == [("", 0, branch_app.LEAF_STEP, f"{children[child]}/s")], got
    return outputs


async def check_ledger(
    conn: asyncpg.Connection,
    workflow_id: str,
    model: Model,
    once: set[str],
    copied: Collection[str] = (),
) -> None:
    """Bodies that must have run once did; nothing ran that the tree lacks or a fork copied."""
    rows = await conn.fetch(
        f"SELECT label, count(*) FROM public.ledger WHERE {FAMILY} GROUP BY label", workflow_id
    )
    counts = {r[0]: r[1] for r in rows}
    assert set(counts) <= set(model.ledger), f"ran what the tree lacks: {counts}"
    for label, call in model.ledger.items():
        n = counts.get(label, 0)
        if call in copied:
            assert n == 0, f"{label} was copied by the fork, yet ran {n} times"
        elif label in once or label.endswith(":tx"):  # a transaction commits exactly once
            assert n == 1, f"{label} ran {n} times: {counts}"
        else:  # interrupted mid-body: at least once
            assert n >= 1, f"{label} never ran: {counts}"


async def check_effects(
    conn: asyncpg.Connection,
    workflow_id: str,
    model: Model,
    copied: Collection[str] = (),
) -> None:
    """Each send, set_event and stream write of this run happened exactly once.

    A fork copies the events and stream entries of the steps it copies (their
    sends went to the original), and runs the rest once more.
    """
    made = [c for c in model.calls.values() if c.label not in copied]
    every = list(model.calls.values())
    received = {c.output for c in model.calls.values() if c.kind == "recv"}
    messages = await conn.fetch(
        "SELECT topic, payload, consumed_at IS NOT NULL FROM dbos_async.messages "
        "WHERE destination_id = $1",
        workflow_id,
    )
    assert sorted((r[0], json.loads(r[1]), r[2]) for r in messages) == sorted(
        (f"t{c.branch}_{c.index}", c.label, c.label in received) for c in made if c.kind == "send"
    )
    events = await conn.fetch(
        "SELECT key, value FROM dbos_async.workflow_events WHERE workflow_id = $1", workflow_id
    )
    assert {r[0]: json.loads(r[1]) for r in events} == {
        f"e{c.branch}_{c.index}": c.label for c in every if c.kind == "event"
    }
    stream = await conn.fetch(
        'SELECT "offset", value, closed FROM dbos_async.streams '
        "WHERE workflow_id = $1 AND key = 's' ORDER BY \"offset\"",
        workflow_id,
    )
    writes = sorted(c.label for c in every if c.kind == "stream")
    offsets = [r[0] for r in stream]
    # Gapless unless a fork copied some entries: new ones then go after the copies.
    assert offsets == list(range(len(writes))) if not copied else len(set(offsets)) == len(writes)
    assert not any(r[2] for r in stream)
    assert sorted(json.loads(r[1]) for r in stream) == writes


async def check_run(
    conn: asyncpg.Connection,
    workflow_id: str,
    model: Model,
    result: Any,
    once: set[str],
    copied: Collection[str] = (),
) -> tuple[dict[str, Any], dict[tuple[str, int], Any]]:
    """Every check of a finished run; returns its now/random values and recorded outputs."""
    captured: dict[str, Any] = {}
    assert matches(model.result, result, captured), f"result {result!r}"
    status = await conn.fetchval(
        "SELECT status FROM dbos_async.workflow_status WHERE workflow_id = $1", workflow_id
    )
    assert status == "SUCCESS", status
    outputs = await check_history(conn, workflow_id, model, captured)
    await check_ledger(conn, workflow_id, model, once, copied)
    await check_effects(conn, workflow_id, model, copied)
    return captured, outputs


# -- the three interruptions ------------------------------------------------------------


def retime(table: dict[str, float]) -> None:
    branch_app.delays.clear()
    branch_app.delays.update(table)


@contextlib.asynccontextmanager
async def harness(url: str, tag: str) -> AsyncIterator[asyncpg.Connection]:
    """A runtime of its own for one example (its own executor and version: nothing else
    recovers or adopts its workflows), the steps' ledger pool, and a connection."""
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(LEDGER_TABLE)
        pool = await asyncpg.create_pool(url, min_size=1, max_size=4)
        branch_app.ledger_pool[:] = [pool]
        try:
            async with DBOS(database_url=url, app_version=tag, executor_id=tag):
                yield conn
        finally:
            branch_app.on_ledger.clear()
            await pool.close()
    finally:
        await conn.close()


async def cancel_and_resume(url: str, s: Scenario) -> None:
    workflow_id = f"c{uuid.uuid4().hex[:12]}"
    async with harness(url, workflow_id) as conn:
        written = [0]
        reached = asyncio.Event()

        def wrote(_label: str) -> None:  # the step bodies' own signal: no polling
            written[0] += 1
            if written[0] >= s.point:
                reached.set()

        branch_app.on_ledger[:] = [wrote]
        retime(s.first)
        with SetWorkflowID(workflow_id):
            handle = await DBOS.start_workflow(branch_app.tree, s.tree)
        if s.point:
            await reached.wait()
        await DBOS.cancel_workflow(workflow_id)
        try:  # the workflow's task has ended: nothing of this execution is in flight
            await handle.get_result()
            note("finished before the cancel landed")
        except WorkflowCancelledError:
            pass
        once = await recorded_bodies(conn, workflow_id)
        note(f"recorded at the cancel: {sorted(once)}")
        retime(s.second)
        handle = await DBOS.resume_workflow(workflow_id)
        with anyio.move_on_after(STUCK) as waiting:
            result = await handle.get_result()
        if waiting.cancelled_caught:  # a plain failure, not a chain of cancellations
            states = await conn.fetch(
                f"SELECT workflow_id, status FROM dbos_async.workflow_status WHERE {FAMILY}",
                workflow_id,
            )
            raise AssertionError(f"resumed, not done in {STUCK} s: {[tuple(r) for r in states]}")
        await check_run(conn, workflow_id, s.model, result, once)


async def fork_at(url: str, s: Scenario) -> None:
    key = uuid.uuid4().hex[:12]
    original, fork = f"o{key}", f"f{key}"
    async with harness(url, original) as conn:
        retime(s.first)
        with SetWorkflowID(original):
            handle = await DBOS.start_workflow(branch_app.tree, s.tree)
        # Uninterrupted: every body ran exactly once.
        values, outputs = await check_run(
            conn, original, s.model, await handle.get_result(), set(s.model.ledger)
        )
        retime(s.second)
        with SetWorkflowID(fork):
            handle = await DBOS.fork_workflow(original, s.point)
        copied = s.model.copied(s.point)
        note(f"copied by the fork: {sorted(copied)}")
        ran = {label for label, call in s.model.ledger.items() if call not in copied}
        forked, fork_outputs = await check_run(
            conn, fork, s.model, await handle.get_result(), ran, copied
        )
        # What the fork copied, it returns as recorded: the same values, the same rows.
        for key_, call in s.model.calls.items():
            if call.label in copied:
                assert fork_outputs[key_] == outputs[key_], call.label
                if call.kind in ("now", "rand", "uuid"):
                    assert forked[call.label] == values[call.label], call.label


async def kill_and_recover(url: str, s: Scenario) -> None:
    tag = f"k{uuid.uuid4().hex[:12]}"  # workflow ID, executor ID and app version
    conn = await asyncpg.connect(url)
    children: list[Child] = []
    try:
        await conn.execute(LEDGER_TABLE)

        async def start(mode: str, env: dict[str, str]) -> Child:
            children.append(await Child.start(APP, mode, url, tag, tag, env=env))
            return children[-1]

        first = await start(
            "start", {"REPLAY_TREE": json.dumps(s.tree), "REPLAY_TIMING": json.dumps(s.first)}
        )
        await first.wait_for("started")

        count = f"SELECT count(*) FROM public.ledger WHERE {FAMILY}"
        with anyio.fail_after(STUCK):  # rows of another process, which announces none: poll
            while await conn.fetchval(count, tag) < s.point:  # noqa: ASYNC110
                await asyncio.sleep(0.005)
        await first.kill()
        once = await recorded_bodies(conn, tag)  # the dead process writes nothing more
        note(f"recorded at the kill: {sorted(once)}")
        second = await start("recover", {"REPLAY_TIMING": json.dumps(s.second)})
        line = await second.wait_for("result ", within=60)
        assert await second.finish() == 0
        await check_run(conn, tag, s.model, json.loads(line.removeprefix("result ")), once)
    finally:
        for child in children:
            await child.kill()
        await conn.close()


def run(example: Awaitable[None]) -> None:
    async def bounded() -> None:
        with anyio.move_on_after(3 * STUCK) as scope:
            await example
        assert not scope.cancelled_caught, f"the example took over {3 * STUCK} s"

    asyncio.run(bounded())


# Sync tests around asyncio.run: each example gets a fresh loop and runtime.


@pytest.mark.timeout(60 + 10 * EXAMPLES)
@replay_settings(EXAMPLES)
@given(scenario=scenarios())
def test_cancel_and_resume_replays_each_branch(db_url: str, scenario: Scenario) -> None:
    run(cancel_and_resume(db_url, scenario))


@pytest.mark.timeout(60 + 10 * EXAMPLES)
@replay_settings(EXAMPLES)
@given(scenario=scenarios(fork=True))
def test_fork_reuses_copied_branches_and_reruns_the_rest(db_url: str, scenario: Scenario) -> None:
    run(fork_at(db_url, scenario))


@pytest.mark.timeout(60 + 20 * KILL_EXAMPLES)
@replay_settings(KILL_EXAMPLES)
@given(scenario=scenarios())
def test_sigkill_and_recovery_replay_each_branch(db_url: str, scenario: Scenario) -> None:
    run(kill_and_recover(db_url, scenario))
