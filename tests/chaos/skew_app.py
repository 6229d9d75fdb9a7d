"""A runtime whose host clock is off, run as a subprocess by the clock-skew scenario.

    python skew_app.py EXECUTOR_ID DATABASE_URL COUNT

Starts COUNT four-step workflows ``sk-<executor>-<i>`` and serves the
``chaos_skew`` queue; prints ``started`` once they are recorded. ``SKEW``
(seconds, may be negative) shifts ``time.time`` and ``time.time_ns``;
``LEASE`` is the fleet lease. With ``TIMED=1`` it also enqueues, on a queue
only it serves, ``timed-<executor>``: 4 s of steps under a 2 s timeout.
"""

from __future__ import annotations

import os

if os.environ.get("SKEW"):  # before anything reads the clock: a host whose clock is off
    import time

    _skew_ns = int(float(os.environ["SKEW"]) * 1e9)
    _time_ns, _time = time.time_ns, time.time
    time.time_ns = lambda: _time_ns() + _skew_ns
    time.time = lambda: _time() + _skew_ns / 1e9

import asyncio
import sys

from ledger import book, four_steps, work

from dbos_async import DBOS, Queue, SetWorkflowID, SetWorkflowTimeout

EXECUTOR, URL, COUNT = sys.argv[1], sys.argv[2], int(sys.argv[3])
HOLD = 0.3

Queue("chaos_skew", concurrency=2)
own_queue = Queue(f"skew_{EXECUTOR}")


@DBOS.workflow(name="skew.task")
async def task(i: int) -> int:
    start = await work("q-start", i, HOLD)
    await work("q-end", i)
    return int(start["v"])


@DBOS.workflow(name="skew.timed")
async def timed() -> int:
    for n in range(4):
        await work(f"t{n}", n, 1.0)
    return 4


async def main() -> None:
    book.open(URL)
    book.executor = EXECUTOR
    async with DBOS(
        database_url=URL,
        app_version="skew",
        executor_id=EXECUTOR,
        lease_seconds=float(os.environ.get("LEASE", "1.5")),
    ) as dbos:
        for i in range(COUNT):
            with SetWorkflowID(f"sk-{EXECUTOR}-{i}"):
                await dbos.start_workflow(four_steps, i, HOLD)
        if os.environ.get("TIMED"):
            # The claim sets the deadline by the database's clock (now + 2 s).
            with SetWorkflowID(f"timed-{EXECUTOR}"), SetWorkflowTimeout(2):
                await own_queue.enqueue(timed)
        print("started", flush=True)
        await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main())
