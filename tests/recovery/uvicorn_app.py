"""A FastAPI app with slow multi-step workflows, for ``uvicorn --workers 2`` (test_uvicorn_workers).

Every step body appends ``start``/``end`` lines, with its process ID, to the
ledger file ``$LEDGER`` (O_APPEND writes of one short line are atomic), so the
test sees which process ran which step, and how often, without our tables.
The runtime takes everything else from the environment: the database URL,
and the default executor ID, the same in every worker.
"""

from __future__ import annotations

import asyncio
import os

from fastapi import FastAPI

from dbos_async import DBOS, SetWorkflowID

STEPS = int(os.environ["JOB_STEPS"])
STEP_SECONDS = 1.0

_ledger = os.open(os.environ["LEDGER"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)


def note(entry: str) -> None:
    os.write(_ledger, f"{entry} {os.getpid()}\n".encode())


@DBOS.step()
async def work(n: int, k: int) -> int:
    note(f"start {n} {k}")
    await asyncio.sleep(STEP_SECONDS)
    note(f"end {n} {k}")
    return k


@DBOS.workflow()
async def job(n: int) -> int:
    return sum([await work(n, k) for k in range(STEPS)])


# A long lease: the survivor's failover round (every lease/3) never comes round
# during the test, so what the dead worker left is the respawned worker's to find.
dbos = DBOS(app_name="uvicorn-workers", app_version="uvicorn-workers", lease_seconds=600)
app = FastAPI(lifespan=dbos.lifespan)


@app.get("/pid")
async def pid() -> int:
    return os.getpid()


@app.post("/jobs/{n}")
async def start(n: int) -> int:
    with SetWorkflowID(f"job-{n}"):
        await dbos.start_workflow(job, n)
    return os.getpid()
