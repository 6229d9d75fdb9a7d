"""A runtime of a small fleet, run as a subprocess by the failover tests.

    python fleet_app.py EXECUTOR_ID DATABASE_URL MODE

MODE ``start:N`` starts N workflows ``fw-<i>`` and prints ``ready`` once every
one of them is inside its second step; ``serve`` only runs (and so adopts).
Steps append ``(workflow_id, entry, executor)`` to ``public.ledger``. With
``HANG=1`` the second step never finishes here; with ``SLOW=1`` it finishes
only after a 3 s thread sleep that a SIGSTOP cannot shorten. With
``SKEW=<seconds>`` this host's wall clock runs that much ahead.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time

if os.environ.get("SKEW"):  # before anything reads the clock: a host whose clock is off
    _skew_ns = int(float(os.environ["SKEW"]) * 1e9)
    _time_ns, _time = time.time_ns, time.time
    time.time_ns = lambda: _time_ns() + _skew_ns
    time.time = lambda: _time() + _skew_ns / 1e9

import anyio
import asyncpg

from dbos_async import DBOS, SetWorkflowID

EXECUTOR, URL, MODE = sys.argv[1], sys.argv[2], sys.argv[3]
_pool: list[asyncpg.Pool] = []
_in_second_step: list[str] = []
_all_in = asyncio.Event()
_wanted = int(MODE.split(":")[1]) if MODE.startswith("start:") else 0


def say(line: str) -> None:
    print(line, flush=True)


async def ledger(entry: str) -> None:
    await _pool[0].execute(
        "INSERT INTO public.ledger (workflow_id, entry, executor) VALUES ($1, $2, $3)",
        DBOS.workflow_id,
        entry,
        EXECUTOR,
    )


@DBOS.step()
async def first(i: int) -> int:
    await ledger("s1")
    return i


@DBOS.step()
async def second(i: int) -> str:
    await ledger("s2:start")
    _in_second_step.append(str(i))
    if len(_in_second_step) == _wanted:
        _all_in.set()
    if os.environ.get("HANG"):
        await asyncio.Event().wait()  # parked until SIGKILL
    if os.environ.get("SLOW"):
        await anyio.to_thread.run_sync(time.sleep, 3)
    await ledger("s2:done")
    return f"{EXECUTOR}:{i}"


@DBOS.step()
async def third(value: str) -> str:
    await ledger("s3")
    return value


@DBOS.workflow()
async def chain(i: int) -> str:
    return await third(await second(await first(i)))


async def main() -> None:
    logging.basicConfig(stream=sys.stdout, level=logging.WARNING, format="log %(message)s")
    _pool.append(await asyncpg.create_pool(URL, min_size=1, max_size=2))
    async with DBOS(
        database_url=URL,
        app_version="fleet",
        executor_id=EXECUTOR,
        lease_seconds=float(os.environ.get("LEASE", "1.0")),
    ) as dbos:
        if MODE.startswith("start:"):
            for i in range(_wanted):
                with SetWorkflowID(f"fw-{i}"):
                    await dbos.start_workflow(chain, i)
            await _all_in.wait()
            say("ready")
        else:
            say("up")
        await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main())
