"""What every side of the benchmarks shares: sizes, the child-process protocol, probes.

The dbos_async side, the floor and the DBOS baseline (which runs in
``.venv-dbos``, without dbos_async installed) all import this module, so it
imports only the stdlib and asyncpg.

Protocol: the runner starts ``<side> WORKLOAD --db-url URL [--quick] [--phase P]``
on a fresh database. The child logs to stderr and prints exactly one JSON
object on stdout: ``{"metrics": {...}, "samples": {...}, "versions": {...}}``,
or ``{"skipped": reason}`` when that side has no such workload (yet).
Two-phase workloads (W6) run a ``seed`` child, which prints ``READY`` once its
work is durably recorded and is then SIGKILLed, and a ``recover`` child.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.metadata
import json
import logging
import math
import os
import sys
import time
import traceback
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping
from dataclasses import dataclass
from typing import Any

import asyncpg

logger = logging.getLogger("benchmarks")

Result = dict[str, Any]

# (full, quick) sizes. Quick runs only validate the harness; their figures are not quotable.
SIZES: dict[str, dict[str, tuple[int, int]]] = {
    "W1": {"n": (500, 60), "warmup": (20, 5)},
    "W2": {"steps": (200, 200), "runs": (5, 2), "runs0": (50, 10)},
    "W3": {"n": (2000, 300), "steps": (3, 3)},
    "W4": {"n": (5000, 300), "wc": (50, 50), "idle": (20, 4)},
    "W5": {"rounds": (200, 20), "events": (20, 5)},
    "W6": {"n": (1000, 200)},
    "W7": {"n": (500, 100)},
    "W8": {"n": (10000, 1000)},
    "F": {
        "single": (2000, 200),
        "pool_n": (10000, 2000),
        "unnest_rows": (200_000, 20_000),
        "notify": (200, 30),
        "gc_coroutines": (2000, 500),
        "gc_rows_each": (3, 3),
    },
}

READY = "READY"
# Set only in a W6 seed process: its workflows block in their step until SIGKILL.
FIRST_RUN_ENV = "BENCH_W6_FIRST_RUN"
APP_VERSION = "bench"
EXECUTOR_ID = "bench"
SAMPLE_INTERVAL_S = 0.02


def size(workload: str, key: str, quick: bool) -> int:
    """The size ``key`` of ``workload`` for a full or a quick run."""
    full, small = SIZES[workload][key]
    return small if quick else full


@dataclass(frozen=True, slots=True)
class ChildArgs:
    """The command line of one measurement process."""

    workload: str
    db_url: str
    quick: bool
    phase: str


Workload = Callable[[ChildArgs], Coroutine[Any, Any, Result]]


def percentile(values: list[float], p: float) -> float:
    """The ``p``-th percentile (0-100), nearest-rank, of a non-empty list."""
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


def median(values: list[float]) -> float:
    """The median of a non-empty list (the mean of the middle two for even sizes)."""
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def us(seconds: float) -> float:
    """Seconds to microseconds, rounded for readable JSON."""
    return round(seconds * 1e6, 1)


def version_of(dist: str) -> str:
    """The installed version of a distribution, or ``"?"``."""
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "?"


def rss_kib() -> int:
    """This process's resident set size in KiB (Linux ``/proc``)."""
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS in /proc/self/status")


def say_ready() -> None:
    """Tell the runner (on stdout) that a seed phase's work is durably recorded."""
    print(READY, flush=True)


async def park_forever() -> None:
    """Wait until the runner SIGKILLs this process."""
    await asyncio.Event().wait()


class ConnectionSampler:
    """Samples the bench database's backend count every ~20 ms from its own connection.

    Its own backend is excluded, so ``peak`` is what the measured runtime holds.
    """

    def __init__(self, db_url: str) -> None:
        self._db_url = db_url
        self.peak = 0
        self.samples: list[int] = []
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> ConnectionSampler:
        conn = await asyncpg.connect(self._db_url)
        self._task = asyncio.create_task(self._run(conn))
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    async def _run(self, conn: asyncpg.Connection) -> None:
        try:
            while True:
                count = await conn.fetchval(
                    "SELECT count(*) FROM pg_stat_activity"
                    " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )
                self.samples.append(count)
                self.peak = max(self.peak, count)
                await asyncio.sleep(SAMPLE_INTERVAL_S)
        finally:
            await conn.close()


@contextlib.asynccontextmanager
async def observer(db_url: str) -> AsyncIterator[asyncpg.Connection]:
    """A plain connection to the bench database, for polling progress from outside a runtime."""
    conn = await asyncpg.connect(db_url)
    try:
        yield conn
    finally:
        await conn.close()


async def wait_for_count(
    conn: asyncpg.Connection, query: str, target: int, within: float = 600.0
) -> float:
    """Poll ``query`` (a count) every 5 ms until it reaches ``target``; return the time then.

    Used where awaiting handles would itself load the database (the baseline's
    handles of queued or recovered workflows poll their rows), so both sides
    are observed the same way.
    """
    deadline = time.perf_counter() + within
    while (count := await conn.fetchval(query)) < target:
        if time.perf_counter() > deadline:
            raise TimeoutError(f"only {count} of {target} after {within}s")
        await asyncio.sleep(0.005)
    return time.perf_counter()


def _parse(argv: list[str]) -> ChildArgs:
    parser = argparse.ArgumentParser(description="Run one benchmark workload, print JSON.")
    parser.add_argument("workload")
    parser.add_argument("--db-url", required=True)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--phase", default="run", choices=["run", "seed", "recover"])
    ns = parser.parse_args(argv)
    return ChildArgs(ns.workload, ns.db_url, ns.quick, ns.phase)


def child_main(side: str, workloads: Mapping[str, Workload], versions: dict[str, str]) -> None:
    """Entry point of a measurement process: run one workload, print its JSON on stdout."""
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    args = _parse(sys.argv[1:])
    fn = workloads.get(args.workload)
    if fn is None:
        result: Result = {"skipped": f"{side} has no workload {args.workload}"}
    else:
        try:
            result = asyncio.run(fn(args))
        except Exception:
            traceback.print_exc()
            print(json.dumps({"error": traceback.format_exc(limit=3)}), flush=True)
            sys.exit(1)
    result.setdefault("versions", versions)
    result["pid"] = os.getpid()
    print(json.dumps(result), flush=True)
