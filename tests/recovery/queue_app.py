"""A queue worker the multi-process tests run three of (and SIGKILL one).

    python queue_app.py DATABASE_URL EXECUTOR_ID

Every task writes ``start`` and ``end`` rows to ``public.qledger`` through
transactions, so each row commits exactly once even across a crash. With
``HANG_AT=n`` the worker parks inside its n-th task, after ``start``, and
prints ``hanging <task>``: the test kills it there.
"""

from __future__ import annotations

import asyncio
import os
import sys

from dbos_async import DBOS, Queue

URL, EXECUTOR = sys.argv[1], sys.argv[2]
HOLD = 0.015
LIMIT, PERIOD = 4, 0.05

Queue(
    "ledgered",
    concurrency=2,
    worker_concurrency=1,
    limiter={"limit": LIMIT, "period": PERIOD},
    priority_enabled=True,
)
_ran: list[int] = []


def say(line: str) -> None:
    print(line, flush=True)


@DBOS.transaction(name="qa.mark")
async def mark(task: int, event: str) -> None:
    await DBOS.connection.execute(
        "INSERT INTO public.qledger (task, event, executor) VALUES ($1, $2, $3)",
        task,
        event,
        EXECUTOR,
    )


@DBOS.workflow(name="qa.task")
async def task(i: int) -> int:
    await mark(i, "start")
    _ran.append(i)
    if len(_ran) == int(os.environ.get("HANG_AT", "0")):
        say(f"hanging {i}")
        await asyncio.Event().wait()  # parked here until SIGKILL
    await asyncio.sleep(HOLD)
    await mark(i, "end")
    return i


async def main() -> None:
    async with DBOS(database_url=URL, app_version="v1", executor_id=EXECUTOR):
        say("ready")
        await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main())
