"""A small application the recovery tests run as a subprocess and SIGKILL.

    python app.py MODE DATABASE_URL [APP_VERSION]

Steps append to a ``ledger`` table, and the process prints a line at each
point the test waits for, so the test kills it at a known place.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time

import asyncpg

from dbos_async import DBOS, SetWorkflowID

URL = sys.argv[2]
_ledger: list[asyncpg.Pool] = []


def say(line: str) -> None:
    print(line, flush=True)


async def ledger(workflow_id: str | None, entry: str) -> None:
    await _ledger[0].execute(
        "INSERT INTO public.ledger (workflow_id, entry) VALUES ($1, $2)", workflow_id, entry
    )


@DBOS.step()
async def step_one(x: int) -> int:
    await ledger(DBOS.workflow_id, "one")
    return x + 1


@DBOS.step()
async def step_two(x: int) -> int:
    await ledger(DBOS.workflow_id, "two:start")
    if os.environ.get("HANG_IN_TWO"):
        say("in-two")
        await asyncio.Event().wait()  # parked here until SIGKILL
    await ledger(DBOS.workflow_id, "two:done")
    return x * 10


@DBOS.workflow()
async def two_steps(x: int) -> int:
    return await step_two(await step_one(x))


@DBOS.step()
async def stamp(label: str) -> float:
    await ledger(DBOS.workflow_id, label)
    return time.time()


@DBOS.workflow()
async def sleeper(seconds: float) -> list[float]:
    before = await stamp("before")
    say("sleeping")
    await DBOS.sleep(seconds)
    return [before, await stamp("after")]


@DBOS.step()
async def suicide() -> None:
    await ledger(DBOS.workflow_id, "suicide")
    os.kill(os.getpid(), signal.SIGKILL)


@DBOS.workflow(max_recovery_attempts=1)
async def poison() -> None:
    await suicide()


@DBOS.step()
async def part(i: int) -> int:
    await ledger(DBOS.workflow_id, f"part:{i}:start")
    if i % 2 and os.environ.get("HANG_ODD"):
        await asyncio.Event().wait()
    await ledger(DBOS.workflow_id, f"part:{i}:done")
    return i * i


@DBOS.workflow()
async def fan_out() -> list[int]:
    return list(await asyncio.gather(*(part(i) for i in range(6))))


STARTERS = {
    "two_steps": (two_steps, (5,)),
    "sleeper": (sleeper, (3.0,)),
    "poison": (poison, ()),
    "fan_out": (fan_out, ()),
}


async def main() -> None:
    mode = sys.argv[1]
    version = sys.argv[3] if len(sys.argv) > 3 else "v1"
    _ledger.append(await asyncpg.create_pool(URL, min_size=1, max_size=4))
    async with DBOS(database_url=URL, app_version=version, executor_id="local") as dbos:
        say("launched")
        if mode.startswith("start:"):
            name = mode.split(":", 1)[1]
            fn, args = STARTERS[name]
            with SetWorkflowID(f"wf-{name}"):
                handle = await dbos.start_workflow(fn, *args)
            say("started")
            say(f"result {await handle.get_result()!r}")
        elif mode.startswith("await:"):
            handle = await dbos.retrieve_workflow(mode.split(":", 1)[1])
            try:
                say(f"result {await handle.get_result(timeout=30)!r}")
            except Exception as exc:
                say(f"error {type(exc).__name__}")
        elif mode.startswith("status:"):
            status = await dbos.get_workflow_status(mode.split(":", 1)[1])
            say(f"status {status.status.value if status else None}")
        elif mode == "idle":
            say("idle")
    await _ledger[0].close()


if __name__ == "__main__":
    asyncio.run(main())
