"""The rows of the results table: each metric, its unit, its floor and its target.

Targets are the ratios of ``BENCHMARKS.md`` ("The figures we must reach"),
judged on the medians of one run: dbos_async against DBOS, against the
floor, or against an absolute bound where BENCHMARKS.md gives one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

# (dbos_async, DBOS, floor) medians -> met? (None: cannot judge, a side is missing)
Check = Callable[[float | None, float | None, float | None], bool | None]

SIDES = ("dbos_async", "dbos", "floor")
# Typographic signs for the table, spelled out so no one mistakes them for x and -.
X = "\N{MULTIPLICATION SIGN}"
MINUS = "\N{MINUS SIGN}"
DASH = "\N{EN DASH}"
FLOOR_WORKLOAD = "F"


def at_most_dbos_over(k: float) -> Check:
    """dbos_async ≤ DBOS / k (lower is better)."""
    return lambda ours, dbos, _: None if ours is None or dbos is None else ours * k <= dbos


def at_least_dbos_times(k: float) -> Check:
    """dbos_async ≥ k x DBOS (higher is better)."""
    return lambda ours, dbos, _: None if ours is None or dbos is None else ours >= k * dbos


def at_most_floor_times(k: float) -> Check:
    """dbos_async ≤ k x the floor (lower is better)."""
    return lambda ours, _, floor: None if ours is None or floor is None else ours <= k * floor


def at_most(bound: float) -> Check:
    """dbos_async ≤ an absolute bound."""
    return lambda ours, _, __: None if ours is None else ours <= bound


@dataclass(frozen=True, slots=True)
class Metric:
    """One row: ``key`` as reported by the workload processes of every side."""

    workload: str
    key: str
    label: str
    unit: str
    higher_is_better: bool
    floor: str | None = None  # a floor metric (workload F) shown beside it
    target: str = ""
    check: Check | None = None


METRICS: tuple[Metric, ...] = (
    Metric("W1", "lat0_median_us", "0 steps, median", "µs", False),
    Metric("W1", "lat0_p99_us", "0 steps, p99", "µs", False),
    Metric(
        "W1",
        "lat1_median_us",
        "1 step, median",
        "µs",
        False,
        target="≤ DBOS / 4",
        check=at_most_dbos_over(4),
    ),
    Metric("W1", "lat1_p99_us", "1 step, p99", "µs", False),
    Metric(
        "W2",
        "per_step_us",
        "per-step cost",
        "µs",
        False,
        floor="insert_commit_us",
        target=f"≤ 1.5 {X} floor",
        check=at_most_floor_times(1.5),
    ),
    Metric("W3", "workflows_per_s", "workflows/s", "1/s", True),
    Metric(
        "W3",
        "steps_per_s",
        "steps/s",
        "1/s",
        True,
        floor="group_commit_rows_per_s",
        target=f"≥ 50 {X} DBOS (stretch 100 {X})",
        check=at_least_dbos_times(50),
    ),
    Metric(
        "W3",
        "peak_connections",
        "peak Postgres connections",
        "conns",
        False,
        target="≤ 10",
        check=at_most(10),
    ),
    Metric(
        "W4",
        "unlimited_tasks_per_s",
        "tasks/s, unlimited",
        "1/s",
        True,
        floor="unnest_rows_per_s",
        target=f"≥ 10 {X} DBOS",
        check=at_least_dbos_times(10),
    ),
    Metric(
        "W4",
        "wc50_tasks_per_s",
        "tasks/s, worker_concurrency=50",
        "1/s",
        True,
        target=f"≥ 50 {X} DBOS",
        check=at_least_dbos_times(50),
    ),
    Metric(
        "W4",
        "idle_enqueue_start_ms",
        "idle enqueue→start, median",
        "ms",
        False,
        target="≤ 10 ms",
        check=at_most(10),
    ),
    Metric(
        "W5",
        "sendrecv_oneway_us",
        "send→recv one-way",
        "µs",
        False,
        floor="notify_us",
        target=f"≤ 5 {X} floor",
        check=at_most_floor_times(5),
    ),
    Metric(
        "W5",
        "event_oneway_us",
        "set_event→get_event, median",
        "µs",
        False,
        floor="notify_us",
        target=f"≤ 5 {X} floor",
        check=at_most_floor_times(5),
    ),
    Metric("W6", "recover_s", "launch → all recovered", "s", False),
    Metric(
        "W6",
        "recover_wf_per_s",
        "recovered workflows/s",
        "1/s",
        True,
        target=f"≥ 10 {X} DBOS",
        check=at_least_dbos_times(10),
    ),
    Metric(
        "W7",
        "overhead_ms",
        f"wall time {MINUS} 1 s",
        "ms",
        False,
        target="≤ 100 ms",
        check=at_most(100),
    ),
    Metric(
        "W8",
        "kib_per_parked",
        "RSS per parked recv",
        "KiB",
        False,
        target="≤ 20 KiB",
        check=at_most(20),
    ),
    Metric("F", "insert_commit_us", "INSERT+COMMIT round trip, median", "µs", False),
    Metric("F", "pool10_inserts_per_s", "INSERTs/s over a pool of 10", "1/s", True),
    Metric("F", "unnest_rows_per_s", "unnest multi-row INSERT", "rows/s", True),
    Metric("F", "notify_us", "NOTIFY→LISTEN wake-up, median", "µs", False),
    Metric("F", "group_commit_rows_per_s", "group-commit checkpoints", "rows/s", True),
)


def speedup(metric: Metric, ours: float | None, dbos: float | None) -> float | None:
    """How many times better dbos_async is than DBOS on this metric (>1: better)."""
    if ours is None or dbos is None or ours <= 0 or dbos <= 0:
        return None
    return ours / dbos if metric.higher_is_better else dbos / ours
