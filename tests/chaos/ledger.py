"""The ledger the step bodies write, and the checks every scenario makes from it.

Each step body inserts ``(workflow_id, step, kind, attempt)`` into
``public.ledger`` when it starts, over a connection of its own (straight to the
server, never through a proxy), and returns its attempt's UUID, so the
recorded checkpoint names the attempt it recorded. A ``@DBOS.transaction``
inserts its row in its own transaction, so the ledger shows every commit.

What the checks hold the runtime to:

- a transaction's row exists exactly once, and it is the recorded attempt;
- a step that has a checkpoint never ran after the run it recorded: its
  recorded attempt is the last one that started (a step may run again only
  when its checkpoint never committed, and then the later run is recorded);
- every workflow ends SUCCESS (none stuck PENDING or ENQUEUED).
"""

from __future__ import annotations

import asyncio
import uuid
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import anyio
import asyncpg

from dbos_async import DBOS

LEDGER_DDL = """
CREATE TABLE public.ledger (
    id bigserial PRIMARY KEY,
    workflow_id text NOT NULL,
    step text NOT NULL,
    kind text NOT NULL,
    attempt text NOT NULL UNIQUE,
    executor text NOT NULL DEFAULT '',
    at timestamptz NOT NULL DEFAULT clock_timestamp())
"""

_LOST = (
    OSError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
)


class Ledger:
    """Where step bodies write; one per test, opened on the test's loop."""

    def __init__(self) -> None:
        self._url = ""
        self._pool: asyncpg.Pool | None = None
        self.executor = ""  # written with each attempt: which process ran it

    def open(self, url: str) -> None:
        self._url = url

    async def close(self) -> None:
        if self._pool is not None:
            self._pool.terminate()
            self._pool = None

    async def record(self, step: str, kind: str = "step") -> str:
        """Write one attempt of the running step; returns its UUID.

        The body retries its own lost connections, as a careful application
        would: asyncpg raises a refused connection as a plain OSError, which
        the runtime records as the step's outcome (README, "API notes"). The
        insert is idempotent (the attempt is unique), so a retry after a lost
        acknowledgement writes one row.
        """
        attempt = str(uuid.uuid4())
        with anyio.fail_after(60):
            while True:
                try:
                    if self._pool is None:
                        self._pool = await asyncpg.create_pool(self._url, min_size=0, max_size=8)
                    await self._pool.execute(
                        "INSERT INTO public.ledger (workflow_id, step, kind, attempt, executor) "
                        "VALUES ($1, $2, $3, $4, $5) ON CONFLICT (attempt) DO NOTHING",
                        DBOS.workflow_id,
                        step,
                        kind,
                        attempt,
                        self.executor,
                    )
                    return attempt
                except _LOST:
                    await anyio.sleep(0.1)  # the server is restarting or unreachable


book = Ledger()

returned: set[str] = set()
"""Workflows whose function returned in this process (its outcome was then up to the runtime)."""


# -- the bodies the scenarios share ----------------------------------------------------


@DBOS.step()
async def work(step: str, value: int, hold: float = 0.0) -> dict[str, Any]:
    attempt = await book.record(step)
    if hold:
        await asyncio.sleep(hold)
    return {"v": value, "attempt": attempt}


@DBOS.transaction()
async def post(step: str, value: int) -> dict[str, Any]:
    attempt = str(uuid.uuid4())
    await DBOS.connection.execute(
        "INSERT INTO public.ledger (workflow_id, step, kind, attempt, executor) "
        "VALUES ($1, $2, 'txn', $3, $4)",
        DBOS.workflow_id,
        step,
        attempt,
        book.executor,
    )
    return {"v": value, "attempt": attempt}


@DBOS.workflow()
async def four_steps(i: int, hold: float = 0.0) -> int:
    """``i + 6``, through two steps, a transaction and a durable sleep."""
    a = await work("a", i, hold)
    b = await post("b", 1)
    await DBOS.sleep(hold)
    c = await work("c", 2, hold)
    d = await post("d", 3)
    returned.add(str(DBOS.workflow_id))
    return int(a["v"] + b["v"] + c["v"] + d["v"])


# -- observing -------------------------------------------------------------------------


class Observer:
    """A plain connection for the test's own reads, reopened after a lost connection."""

    def __init__(self, url: str) -> None:
        self._url = url
        self._conn: asyncpg.Connection | None = None

    async def fetch(self, sql: str, *args: object, within: float = 60) -> list[asyncpg.Record]:
        with anyio.fail_after(within):
            while True:
                try:
                    if self._conn is None or self._conn.is_closed():
                        self._conn = await asyncpg.connect(
                            self._url, server_settings={"search_path": "dbos_async, public"}
                        )
                    return await self._conn.fetch(sql, *args)
                except _LOST:
                    await self.close()
                    await anyio.sleep(0.1)  # the server is restarting: try again shortly

    async def fetchval(self, sql: str, *args: object) -> Any:
        rows = await self.fetch(sql, *args)
        return rows[0][0] if rows else None

    async def close(self) -> None:
        if self._conn is not None:
            self._conn.terminate()
            self._conn = None


async def until(condition: Callable[[], Awaitable[bool]], what: str, within: float = 30) -> None:
    """Wait for a state another process or component writes to the database (bounded poll)."""
    try:
        with anyio.fail_after(within):
            while not await condition():  # noqa: ASYNC110 - the state is rows, not an event here
                await anyio.sleep(0.02)
    except TimeoutError:
        raise AssertionError(f"not within {within}s: {what}") from None


async def statuses(observer: Observer) -> dict[str, str]:
    rows = await observer.fetch("SELECT workflow_id, status FROM dbos_async.workflow_status")
    return {r[0]: r[1] for r in rows}


async def problems(observer: Observer, workflow_ids: Iterable[str] | None = None) -> list[str]:
    """Everything the ledger and the system tables say went wrong (empty: nothing)."""
    wanted = None if workflow_ids is None else set(workflow_ids)
    found: list[str] = []
    status_of = await statuses(observer)
    for wid, status in sorted(status_of.items()):
        if (wanted is None or wid in wanted) and status != "SUCCESS":
            found.append(f"{wid} is {status}")
    recorded: dict[str, set[str]] = defaultdict(set)
    for r in await observer.fetch(
        "SELECT workflow_id, output::jsonb ->> 'attempt' FROM dbos_async.operation_outputs "
        "WHERE output IS NOT NULL AND jsonb_typeof(output::jsonb) = 'object' "
        "UNION ALL SELECT workflow_id, output::jsonb ->> 'attempt' FROM dbos_async.branch_outputs "
        "WHERE output IS NOT NULL AND jsonb_typeof(output::jsonb) = 'object'"
    ):
        if r[1] is not None:
            recorded[r[0]].add(r[1])
    runs: dict[tuple[str, str, str], list[str]] = defaultdict(list)
    for r in await observer.fetch(
        "SELECT workflow_id, step, kind, attempt FROM public.ledger ORDER BY at, id"
    ):
        runs[(r[0], r[1], r[2])].append(r[3])
    for (wid, step, kind), attempts in sorted(runs.items()):
        if wanted is not None and wid not in wanted:
            continue
        mine = [a for a in attempts if a in recorded[wid]]
        if kind == "txn" and len(attempts) != 1:
            found.append(f"{wid} transaction {step} committed {len(attempts)} times")
        if len(mine) > 1:
            found.append(f"{wid} {kind} {step}: {len(mine)} attempts recorded")
        elif not mine and status_of.get(wid) == "SUCCESS":
            found.append(f"{wid} {kind} {step}: ran {len(attempts)} time(s), none recorded")
        elif mine and mine[0] != attempts[-1]:
            later = len(attempts) - 1 - attempts.index(mine[0])
            found.append(f"{wid} {kind} {step} ran {later} more time(s) after its recorded run")
    return found


async def describe(observer: Observer, workflow_ids: Iterable[str]) -> list[str]:
    """What the database says about some workflows: their rows, steps and ledger entries."""
    lines = []
    for wid in workflow_ids:
        row = await observer.fetch(
            "SELECT status, queue_name, executor_id, fence, recovery_attempts, started_at, "
            "created_at, updated_at FROM dbos_async.workflow_status WHERE workflow_id = $1",
            wid,
        )
        steps = await observer.fetch(
            "SELECT step_id, function_name, output IS NOT NULL, error IS NOT NULL "
            "FROM dbos_async.operation_outputs WHERE workflow_id = $1 ORDER BY step_id",
            wid,
        )
        runs = await observer.fetch(
            "SELECT step, kind, at FROM public.ledger WHERE workflow_id = $1 ORDER BY at", wid
        )
        lines.append(
            f"{wid}: row {dict(row[0]) if row else None}; "
            f"steps {[tuple(s) for s in steps]}; ledger {[(r[0], r[1]) for r in runs]}"
        )
    return lines
