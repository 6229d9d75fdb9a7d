"""A workflow that runs a random tree of concurrent branches, for test_branch_replay.py.

The tree is the workflow's input (JSON): a branch is a list of ops, each a
durable call or a ``spawn`` that creates child branches one of five ways.
Every call returns or records a value derived only from its position (its
label, ``"<path>/<index>:<kind>"``), except ``now``/``rand``/``uuid``, whose
values are recorded, so an uninterrupted run's result is known in advance.

How long each step body (and the plain code before each call) takes comes
from ``delays``, a table that is not part of any input: the test re-times
every call between a first run and its replay. Step and transaction bodies
append a row to ``public.ledger`` so the test can count executions.

Imported by the in-process tests, and run as the subprocess the SIGKILL test
kills and relaunches::

    REPLAY_TIMING='{label: seconds}' [REPLAY_TREE='[ops]'] \
        python branch_app.py start|recover DATABASE_URL WORKFLOW_ID TAG

``start`` starts the workflow (prints ``started``); ``recover`` launches a
runtime with the same executor ID and app version (both ``TAG``), which
recovers it. Both print ``result <json>`` once it finishes.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import sys
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import asyncpg
from anyio.abc import TaskStatus

from dbos_async import DBOS, Queue, SetWorkflowID

# Explicit names: run as a script this module is __main__, imported it is branch_app,
# and the subprocess must record (and recover) the same functions as the test process.
TREE = "replay.tree"
STEP = "replay.step"
TX = "replay.tx"
LEAF = "replay.leaf"
LEAF_STEP = "replay.leaf_step"

WAIT = 30.0  # recv/get_event find their message or event at once; this only bounds a bug

delays: dict[str, float] = {}
"""The timing table: label -> seconds for a body, label + '^' -> pause before the call."""

ledger_pool: list[asyncpg.Pool] = []
"""The steps' own pool (not the runtime's): a step's effect outside any checkpoint."""

on_ledger: list[Callable[[str], None]] = []
"""Called after each ledger write: the in-process test's event for "k rows exist"."""

LEDGER_INSERT = "INSERT INTO public.ledger (workflow_id, label, token) VALUES ($1, $2, $3)"


def _wrote(label: str) -> None:
    for hook in on_ledger:
        hook(label)


async def _pause(key: str) -> None:
    # Even a zero delay yields, so a re-timed run also reorders same-tick wake-ups.
    await asyncio.sleep(delays.get(key, 0.0))


@DBOS.step(name=STEP)
async def step(label: str) -> str:
    # The token tells executions apart: a step that runs twice leaves two rows.
    await ledger_pool[0].execute(LEDGER_INSERT, DBOS.workflow_id, label, uuid.uuid4().hex)
    _wrote(label)
    await _pause(label)  # after the write, so an interruption can land mid-body
    return label


@DBOS.step(name=LEAF_STEP)
async def leaf_step(label: str) -> str:
    await ledger_pool[0].execute(LEDGER_INSERT, DBOS.workflow_id, label, uuid.uuid4().hex)
    _wrote(label)
    await _pause(label)
    return label


@DBOS.transaction(name=TX)
async def tx(label: str) -> str:
    # Through the transaction's connection: it commits with the checkpoint or not at all.
    await DBOS.connection.execute(LEDGER_INSERT, DBOS.workflow_id, label, uuid.uuid4().hex)
    _wrote(label)
    await _pause(label)
    return label


@DBOS.workflow(name=LEAF)
async def leaf(label: str) -> str:
    return await leaf_step(f"{label}/s")


work_queue = Queue("replay_queue")


@DBOS.workflow(name=TREE)
async def tree(ops: list[dict[str, Any]]) -> list[Any]:
    return await _branch("", ops, None)


Ready = tuple[int, Callable[[], None]]  # (op index, task_status.started) of an anyio start


class _Walk:
    """One branch being run: its results and how many tasks it has created."""

    def __init__(self, path: str, ops: list[dict[str, Any]], ready: Ready | None) -> None:
        self.path = path
        self.ops = ops
        self.results: list[Any] = [None] * len(ops)
        self.kids = 0
        self.ready = ready

    def signal(self, index: int) -> None:
        if self.ready is not None and index >= self.ready[0]:
            self.ready[1]()
            self.ready = None


async def _branch(path: str, ops: list[dict[str, Any]], ready: Ready | None) -> list[Any]:
    walk = _Walk(path, ops, ready)
    await _run(walk, 0)
    walk.signal(len(ops))
    return walk.results


async def _run(walk: _Walk, start: int) -> None:
    for i in range(start, len(walk.ops)):
        walk.signal(i)
        op = walk.ops[i]
        here = f"{walk.path}/{i}:{op['k']}"
        await _pause(here + "^")
        if op["k"] != "spawn":
            walk.results[i] = await _call(walk.path, i, op, here)
            continue
        paths = []
        for _ in op["kids"]:
            paths.append(f"{walk.path}.{walk.kids}" if walk.path else str(walk.kids))
            walk.kids += 1
        if op["overlap"]:
            # The rest of this branch runs while its new children do.
            walk.results[i] = await _spawn(op, paths, functools.partial(_run, walk, i + 1))
            return
        walk.results[i] = await _spawn(op, paths, None)


async def _call(path: str, i: int, op: dict[str, Any], here: str) -> Any:
    kind = op["k"]
    if kind == "step":
        return await step(here)
    if kind == "tx":
        return await tx(here)
    if kind == "sleep":
        await DBOS.sleep(delays.get(here, 0.0))
        return here
    if kind == "event":
        await DBOS.set_event(f"e{path}_{i}", here)
        return here
    if kind == "getev":  # its own event, set earlier in this branch
        assert DBOS.workflow_id is not None
        return await DBOS.get_event(DBOS.workflow_id, f"e{path}_{op['ref']}", WAIT)
    if kind == "stream":
        await DBOS.write_stream("s", here)
        return here
    if kind == "now":
        return ["now", here, (await DBOS.now()).isoformat()]
    if kind == "rand":
        return ["rand", here, await DBOS.random()]
    if kind == "uuid":
        return ["uuid", here, str(await DBOS.uuid4())]
    if kind == "child":
        return await leaf(here)
    if kind == "enqueue":  # the same leaf, run by a queue worker
        return await (await work_queue.enqueue(leaf, here)).get_result()
    if kind == "send":  # to itself, on a topic no other call uses
        assert DBOS.workflow_id is not None
        await DBOS.send(DBOS.workflow_id, here, topic=f"t{path}_{i}")
        return here
    if kind == "recv":  # the message of an earlier send of this branch
        return await DBOS.recv(f"t{path}_{op['ref']}", WAIT)
    raise AssertionError(f"unknown op {op!r}")


async def _spawn(
    op: dict[str, Any], paths: list[str], rest: Callable[[], Awaitable[None]] | None
) -> list[Any]:
    """Create one child branch per path, the way ``op`` says; ``rest`` runs meanwhile."""
    kids: list[list[dict[str, Any]]] = op["kids"]
    out: list[Any] = [None] * len(kids)
    how = op["how"]
    pairs = list(zip(paths, kids, strict=True))
    if how == "gather":
        gathered = asyncio.gather(*(_branch(p, k, None) for p, k in pairs))
        if rest is not None:
            await rest()
        return list(await gathered)
    if how == "task":
        tasks = [asyncio.create_task(_branch(p, k, None)) for p, k in pairs]
        if rest is not None:
            await rest()
        return [await t for t in tasks]
    if how == "taskgroup":
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(_branch(p, k, None)) for p, k in pairs]
            if rest is not None:
                await rest()
        return [t.result() for t in tasks]

    async def store(j: int) -> None:
        out[j] = await _branch(paths[j], kids[j], None)

    async def started(j: int, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        # Reports started just before its op op["at"][j]: the parent waits until then.
        out[j] = await _branch(paths[j], kids[j], (op["at"][j], lambda: task_status.started()))

    async with anyio.create_task_group() as tg:
        for j in range(len(kids)):
            if how == "anyio":
                tg.start_soon(store, j)
            else:
                await tg.start(started, j)
        if rest is not None:
            await rest()
    return out


def say(line: str) -> None:
    print(line, flush=True)


async def main() -> None:
    mode, url, workflow_id, tag = sys.argv[1:5]
    delays.update(json.loads(os.environ["REPLAY_TIMING"]))
    ledger_pool.append(await asyncpg.create_pool(url, min_size=1, max_size=4))
    try:
        async with DBOS(database_url=url, app_version=tag, executor_id=tag) as dbos:
            if mode == "start":
                with SetWorkflowID(workflow_id):
                    handle = await dbos.start_workflow(tree, json.loads(os.environ["REPLAY_TREE"]))
                say("started")
            else:
                handle = await dbos.retrieve_workflow(workflow_id)
            say(f"result {json.dumps(await handle.get_result(timeout=60))}")
    finally:
        await ledger_pool[0].close()


if __name__ == "__main__":
    asyncio.run(main())
