"""The baseline side: DBOS Transact for Python (``dbos==3.4.0``), through its async API.

``.venv-dbos/bin/python -m benchmarks.baseline_dbos W1 --db-url URL [--quick] [--phase P]``

Runs in ``.venv-dbos``, where dbos_async is not installed: it imports only
dbos, asyncpg, the stdlib and ``benchmarks.harness`` (itself stdlib + asyncpg).
Each workload mirrors the one in ``workloads_dbos_async.py``, with the same
sizes, the same clock points and the same way of observing completion.
``DBOS.launch()`` and ``DBOS.destroy()`` are blocking calls in dbos; they run
outside the timed sections except in W6, where launching is part of the figure.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

from dbos import DBOS, DBOSConfig, SetWorkflowID

from benchmarks.harness import (
    APP_VERSION,
    EXECUTOR_ID,
    FIRST_RUN_ENV,
    ChildArgs,
    ConnectionSampler,
    Result,
    Workload,
    child_main,
    median,
    observer,
    park_forever,
    percentile,
    say_ready,
    size,
    us,
    version_of,
    wait_for_count,
)

SUCCESS_COUNT = "SELECT count(*) FROM dbos.workflow_status WHERE status = 'SUCCESS'"


def launch(args: ChildArgs) -> None:
    """Create and launch the process's DBOS singleton on the bench database."""
    config: DBOSConfig = {
        "name": "bench",
        "system_database_url": args.db_url,
        "application_version": APP_VERSION,
        "executor_id": EXECUTOR_ID,
        "log_level": "WARNING",
    }
    DBOS(config=config)
    DBOS.launch()


class Launched:
    """``async with Launched(args):`` the DBOS singleton, destroyed on exit."""

    def __init__(self, args: ChildArgs) -> None:
        self._args = args

    async def __aenter__(self) -> Launched:
        launch(self._args)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        DBOS.destroy()


@DBOS.step()
async def noop_step(i: int) -> int:
    return i


@DBOS.workflow()
async def steps_wf(n: int) -> int:
    for i in range(n):
        await noop_step(i)
    return n


@DBOS.workflow()
async def sleep_wf(seconds: float) -> None:
    await DBOS.sleep_async(seconds)


@DBOS.workflow()
async def stamp_wf() -> float:
    return time.perf_counter()


@DBOS.step()
async def block_on_first_run(i: int) -> int:
    if os.environ.get(FIRST_RUN_ENV):
        await park_forever()
    return i


@DBOS.workflow()
async def blocked_wf(i: int) -> int:
    return await block_on_first_run(i)


@DBOS.workflow()
async def ponger(rounds: int) -> None:
    for _ in range(rounds):
        sender = await DBOS.recv_async("ping", timeout_seconds=60)
        await DBOS.send_async(sender, "pong", "pong")


@DBOS.workflow()
async def pinger(partner: str, rounds: int) -> list[float]:
    me = DBOS.workflow_id
    t_first = time.perf_counter()
    for _ in range(rounds):
        await DBOS.send_async(partner, me, "ping")
        await DBOS.recv_async("pong", timeout_seconds=60)
    return [t_first, time.perf_counter()]


_event_turn: asyncio.Queue[int] = asyncio.Queue()


@DBOS.workflow()
async def event_setter(n: int) -> None:
    for i in range(n):  # a hot loop, as on the dbos_async side
        await _event_turn.get()
        await DBOS.set_event_async(f"stamp-{i}", time.perf_counter())


async def _latencies(n: int, steps: int) -> list[float]:
    samples = []
    for _ in range(n):
        t0 = time.perf_counter()
        handle = await DBOS.start_workflow_async(steps_wf, steps)
        await handle.get_result()
        samples.append(us(time.perf_counter() - t0))
    return samples


async def w1(args: ChildArgs) -> Result:
    n, warmup = size("W1", "n", args.quick), size("W1", "warmup", args.quick)
    async with Launched(args):
        await _latencies(warmup, 1)
        lat0 = await _latencies(n, 0)
        lat1 = await _latencies(n, 1)
    return {
        "metrics": {
            "lat0_median_us": median(lat0),
            "lat0_p99_us": percentile(lat0, 99),
            "lat1_median_us": median(lat1),
            "lat1_p99_us": percentile(lat1, 99),
        },
        "samples": {"lat0_us": lat0, "lat1_us": lat1},
    }


async def w2(args: ChildArgs) -> Result:
    steps = size("W2", "steps", args.quick)
    async with Launched(args):
        await _latencies(3, 3)
        t0 = await _latencies(size("W2", "runs0", args.quick), 0)
        tn = await _latencies(size("W2", "runs", args.quick), steps)
    per_step = (median(tn) - median(t0)) / steps
    return {
        "metrics": {"per_step_us": round(per_step, 1), "t0_us": median(t0), "tn_us": median(tn)},
        "samples": {"t0_us": t0, "tn_us": tn},
    }


async def w3(args: ChildArgs) -> Result:
    n, steps = size("W3", "n", args.quick), size("W3", "steps", args.quick)
    async with Launched(args), ConnectionSampler(args.db_url) as sampler:
        t0 = time.perf_counter()
        handles = await asyncio.gather(
            *(DBOS.start_workflow_async(steps_wf, steps) for _ in range(n))
        )
        await asyncio.gather(*(h.get_result() for h in handles))
        elapsed = time.perf_counter() - t0
    return {
        "metrics": {
            "workflows_per_s": round(n / elapsed, 1),
            "steps_per_s": round(n * steps / elapsed, 1),
            "peak_connections": sampler.peak,
            "elapsed_s": round(elapsed, 3),
        },
        "samples": {"connections": sampler.samples},
    }


async def w4(args: ChildArgs) -> Result:
    n, wc = size("W4", "n", args.quick), size("W4", "wc", args.quick)
    metrics: dict[str, float] = {}
    async with Launched(args), observer(args.db_url) as conn:
        # Queues are database-backed in dbos 3.x: registered once launched.
        unlimited = await DBOS.register_queue_async("bench_unlimited")
        limited = await DBOS.register_queue_async("bench_limited", worker_concurrency=wc)
        idle = await DBOS.register_queue_async("bench_idle")
        queue: Any
        for key, queue in (("unlimited_tasks_per_s", unlimited), ("wc50_tasks_per_s", limited)):
            done_before = await conn.fetchval(SUCCESS_COUNT)
            t0 = time.perf_counter()
            await asyncio.gather(*(queue.enqueue_async(stamp_wf) for _ in range(n)))
            t1 = await wait_for_count(conn, SUCCESS_COUNT, done_before + n)
            metrics[key] = round(n / (t1 - t0), 1)
        latencies = []
        for _ in range(size("W4", "idle", args.quick)):
            await asyncio.sleep(0.2)
            t0 = time.perf_counter()
            handle = await idle.enqueue_async(stamp_wf)
            latencies.append(round((await handle.get_result() - t0) * 1000, 2))
    metrics["idle_enqueue_start_ms"] = median(latencies)
    return {"metrics": metrics, "samples": {"idle_enqueue_start_ms": latencies}}


async def w5(args: ChildArgs) -> Result:
    rounds = size("W5", "rounds", args.quick)
    events = []
    async with Launched(args):
        with SetWorkflowID("bench-ponger"):
            pong = await DBOS.start_workflow_async(ponger, rounds)
        with SetWorkflowID("bench-pinger"):
            ping = await DBOS.start_workflow_async(pinger, "bench-ponger", rounds)
        t_first, t_last = await ping.get_result()
        await pong.get_result()
        n = size("W5", "events", args.quick)
        with SetWorkflowID("bench-events"):
            setter = await DBOS.start_workflow_async(event_setter, n)
        for i in range(n):
            _event_turn.put_nowait(i)
            stamp = await DBOS.get_event_async("bench-events", f"stamp-{i}", timeout_seconds=60)
            events.append(us(time.perf_counter() - stamp))
        await setter.get_result()
    return {
        "metrics": {
            "sendrecv_oneway_us": us((t_last - t_first) / (2 * rounds)),
            "event_oneway_us": median(events),
        },
        "samples": {"event_oneway_us": events},
    }


async def w6(args: ChildArgs) -> Result:
    n = size("W6", "n", args.quick)
    if args.phase == "seed":
        launch(args)
        await asyncio.gather(*(DBOS.start_workflow_async(blocked_wf, i) for i in range(n)))
        say_ready()
        await park_forever()
    os.environ.pop(FIRST_RUN_ENV, None)
    async with observer(args.db_url) as conn:
        t0 = time.perf_counter()
        launch(args)  # recovery of this executor's PENDING workflows starts here
        launched = time.perf_counter()
        try:
            t1 = await wait_for_count(conn, SUCCESS_COUNT, n)
        finally:
            DBOS.destroy()
    return {
        "metrics": {
            "recover_s": round(t1 - t0, 3),
            "recover_wf_per_s": round(n / (t1 - t0), 1),
            "launch_s": round(launched - t0, 3),
        },
        "samples": {},
    }


async def w7(args: ChildArgs) -> Result:
    n = size("W7", "n", args.quick)
    async with Launched(args):
        t0 = time.perf_counter()
        handles = await asyncio.gather(
            *(DBOS.start_workflow_async(sleep_wf, 1.0) for _ in range(n))
        )
        await asyncio.gather(*(h.get_result() for h in handles))
        elapsed = time.perf_counter() - t0
    return {"metrics": {"overhead_ms": round((elapsed - 1.0) * 1000, 1)}, "samples": {}}


WORKLOADS: dict[str, Workload] = {
    "W1": w1,
    "W2": w2,
    "W3": w3,
    "W4": w4,
    "W5": w5,
    "W6": w6,
    "W7": w7,
}

if __name__ == "__main__":
    child_main("dbos", WORKLOADS, {"dbos": version_of("dbos"), "asyncpg": version_of("asyncpg")})
