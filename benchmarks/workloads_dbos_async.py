"""The dbos_async side: one coroutine per workload, run in a fresh process on a fresh database.

``python -m benchmarks.workloads_dbos_async W1 --db-url URL [--quick] [--phase P]``

Workflows and steps live at module level because registered names must be
unique per process. W4, W5 and W8 use parts of the API (queues, messaging)
that are being built in parallel: each checks that its names exist and
reports itself skipped when they do not.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

import dbos_async
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
    rss_kib,
    say_ready,
    size,
    us,
    version_of,
    wait_for_count,
)
from dbos_async import DBOS, SetWorkflowID

# Messaging is being built in parallel: reached through an untyped alias until it lands,
# and each workload that uses it checks that the names exist first.
Messaging: Any = DBOS

SUCCESS_COUNT = "SELECT count(*) FROM dbos_async.workflow_status WHERE status = 'SUCCESS'"


def runtime(args: ChildArgs) -> DBOS:
    """A fresh runtime on the bench database, with the identity W6 recovers under."""
    return DBOS(database_url=args.db_url, app_version=APP_VERSION, executor_id=EXECUTOR_ID)


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
    await DBOS.sleep(seconds)


@DBOS.workflow()
async def stamp_wf() -> float:
    """Returns when it started, for enqueue→start latency (same process, same clock)."""
    return time.perf_counter()


@DBOS.step()
async def block_on_first_run(i: int) -> int:
    if os.environ.get(FIRST_RUN_ENV):
        await park_forever()  # the seed process is SIGKILLed while every workflow is here
    return i


@DBOS.workflow()
async def blocked_wf(i: int) -> int:
    return await block_on_first_run(i)


async def _latencies(dbos: DBOS, n: int, steps: int) -> list[float]:
    samples = []
    for _ in range(n):
        t0 = time.perf_counter()
        handle = await dbos.start_workflow(steps_wf, steps)
        await handle.get_result()
        samples.append(us(time.perf_counter() - t0))
    return samples


async def w1(args: ChildArgs) -> Result:
    """W1: start→result latency of one workflow at a time, 0 and 1 steps."""
    n, warmup = size("W1", "n", args.quick), size("W1", "warmup", args.quick)
    async with runtime(args) as dbos:
        await _latencies(dbos, warmup, 1)
        lat0 = await _latencies(dbos, n, 0)
        lat1 = await _latencies(dbos, n, 1)
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
    """W2: per-step cost = (t(200 steps) - t(0 steps)) / 200, medians of several runs."""
    steps = size("W2", "steps", args.quick)
    async with runtime(args) as dbos:
        await _latencies(dbos, 3, 3)
        t0 = await _latencies(dbos, size("W2", "runs0", args.quick), 0)
        tn = await _latencies(dbos, size("W2", "runs", args.quick), steps)
    per_step = (median(tn) - median(t0)) / steps
    return {
        "metrics": {"per_step_us": round(per_step, 1), "t0_us": median(t0), "tn_us": median(tn)},
        "samples": {"t0_us": t0, "tn_us": tn},
    }


async def w3(args: ChildArgs) -> Result:
    """W3: N workflows of 3 steps started at once; throughput and peak connections."""
    n, steps = size("W3", "n", args.quick), size("W3", "steps", args.quick)
    async with runtime(args) as dbos, ConnectionSampler(args.db_url) as sampler:
        t0 = time.perf_counter()
        handles = await asyncio.gather(*(dbos.start_workflow(steps_wf, steps) for _ in range(n)))
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
    """W4: queue throughput, unlimited and with worker_concurrency; idle enqueue→start."""
    queue_cls: Any = getattr(dbos_async, "Queue", None)
    if queue_cls is None:
        return {"skipped": "dbos_async has no Queue yet"}
    n, wc = size("W4", "n", args.quick), size("W4", "wc", args.quick)
    unlimited = queue_cls("bench_unlimited")
    limited = queue_cls("bench_limited", worker_concurrency=wc)
    idle = queue_cls("bench_idle")
    metrics: dict[str, float] = {}
    async with runtime(args), observer(args.db_url) as conn:
        for key, queue in (("unlimited_tasks_per_s", unlimited), ("wc50_tasks_per_s", limited)):
            done_before = await conn.fetchval(SUCCESS_COUNT)
            t0 = time.perf_counter()
            await asyncio.gather(*(queue.enqueue(stamp_wf) for _ in range(n)))
            t1 = await wait_for_count(conn, SUCCESS_COUNT, done_before + n)
            metrics[key] = round(n / (t1 - t0), 1)
        latencies = []
        for _ in range(size("W4", "idle", args.quick)):
            await asyncio.sleep(0.2)  # let the worker go idle
            t0 = time.perf_counter()
            handle = await idle.enqueue(stamp_wf)
            latencies.append(round((await handle.get_result() - t0) * 1000, 2))
    metrics["idle_enqueue_start_ms"] = median(latencies)
    return {"metrics": metrics, "samples": {"idle_enqueue_start_ms": latencies}}


@DBOS.workflow()
async def ponger(rounds: int) -> None:
    for _ in range(rounds):
        sender = await Messaging.recv("ping", timeout_seconds=60)
        await Messaging.send(sender, "pong", "pong")


@DBOS.workflow()
async def pinger(partner: str, rounds: int) -> list[float]:
    me = DBOS.workflow_id
    t_first = time.perf_counter()
    for _ in range(rounds):
        await Messaging.send(partner, me, "ping")
        await Messaging.recv("pong", timeout_seconds=60)
    return [t_first, time.perf_counter()]


_event_turn: asyncio.Queue[int] = asyncio.Queue()


@DBOS.workflow()
async def event_setter(n: int) -> None:
    # Each event is set once the reader is about to wait for it: a hot loop,
    # so the figure is not an idle machine's wake-up time (same on both sides).
    for i in range(n):
        await _event_turn.get()
        await Messaging.set_event(f"stamp-{i}", time.perf_counter())


async def w5(args: ChildArgs) -> Result:
    """W5: one-way latency of send→recv (ping-pong) and set_event→get_event."""
    if not all(hasattr(DBOS, name) for name in ("send", "recv", "set_event", "get_event")):
        return {"skipped": "dbos_async has no send/recv/set_event/get_event yet"}
    rounds = size("W5", "rounds", args.quick)
    events = []
    async with runtime(args) as dbos:
        with SetWorkflowID("bench-ponger"):
            pong = await dbos.start_workflow(ponger, rounds)
        with SetWorkflowID("bench-pinger"):
            ping = await dbos.start_workflow(pinger, "bench-ponger", rounds)
        t_first, t_last = await ping.get_result()
        await pong.get_result()
        n = size("W5", "events", args.quick)
        with SetWorkflowID("bench-events"):
            setter = await dbos.start_workflow(event_setter, n)
        for i in range(n):
            _event_turn.put_nowait(i)
            stamp = await Messaging.get_event("bench-events", f"stamp-{i}", timeout_seconds=60)
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
    """W6: recover N PENDING workflows left by a SIGKILLed seed process."""
    n = size("W6", "n", args.quick)
    if args.phase == "seed":
        async with runtime(args) as dbos:
            await asyncio.gather(*(dbos.start_workflow(blocked_wf, i) for i in range(n)))
            say_ready()
            await park_forever()
    os.environ.pop(FIRST_RUN_ENV, None)
    async with observer(args.db_url) as conn:
        t0 = time.perf_counter()
        dbos = runtime(args)
        await dbos.launch()
        launched = time.perf_counter()
        try:
            t1 = await wait_for_count(conn, SUCCESS_COUNT, n)
        finally:
            await dbos.shutdown()
    return {
        "metrics": {
            "recover_s": round(t1 - t0, 3),
            "recover_wf_per_s": round(n / (t1 - t0), 1),
            "launch_s": round(launched - t0, 3),
        },
        "samples": {},
    }


async def w7(args: ChildArgs) -> Result:
    """W7: N concurrent workflows each durably sleeping 1 s: wall time - 1 s."""
    n = size("W7", "n", args.quick)
    async with runtime(args) as dbos:
        t0 = time.perf_counter()
        handles = await asyncio.gather(*(dbos.start_workflow(sleep_wf, 1.0) for _ in range(n)))
        await asyncio.gather(*(h.get_result() for h in handles))
        elapsed = time.perf_counter() - t0
    return {"metrics": {"overhead_ms": round((elapsed - 1.0) * 1000, 1)}, "samples": {}}


@DBOS.workflow()
async def parked_wf() -> None:
    await Messaging.recv("never", timeout_seconds=3600)


async def w8(args: ChildArgs) -> Result:
    """W8: resident memory per workflow parked in recv."""
    if not hasattr(DBOS, "recv"):
        return {"skipped": "dbos_async has no recv yet"}
    n = size("W8", "n", args.quick)
    async with runtime(args) as dbos:
        await asyncio.sleep(0.5)
        before = rss_kib()
        await asyncio.gather(*(dbos.start_workflow(parked_wf) for _ in range(n)))
        await asyncio.sleep(2.0)  # every workflow reaches its recv
        after = rss_kib()
    return {
        "metrics": {"kib_per_parked": round((after - before) / n, 2)},
        "samples": {"rss_kib": [before, after]},
    }


WORKLOADS: dict[str, Workload] = {
    "W1": w1,
    "W2": w2,
    "W3": w3,
    "W4": w4,
    "W5": w5,
    "W6": w6,
    "W7": w7,
    "W8": w8,
}

if __name__ == "__main__":
    child_main(
        "dbos_async",
        WORKLOADS,
        {"dbos_async": version_of("dbos-async"), "asyncpg": version_of("asyncpg")},
    )
