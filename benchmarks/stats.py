"""Summaries of repeated measurements: median with min and max, never a mean."""

from __future__ import annotations

from typing import TypedDict

from benchmarks.harness import median


class Summary(TypedDict):
    """One metric over the repetitions of a workload."""

    median: float
    min: float
    max: float
    n: int


def summarize(values: list[float]) -> Summary:
    """Median, min and max of one metric's per-repetition values (non-empty)."""
    return {"median": median(values), "min": min(values), "max": max(values), "n": len(values)}


def summarize_runs(runs: list[dict[str, float]]) -> dict[str, Summary]:
    """Summaries of every metric that all runs reported."""
    if not runs:
        return {}
    keys = [k for k in runs[0] if all(k in run for run in runs)]
    return {k: summarize([float(run[k]) for run in runs]) for k in keys}


def fmt(value: float | None) -> str:
    """A figure with about three significant digits and thousands separators."""
    if value is None:
        return "—"
    magnitude = abs(value)
    if magnitude >= 100 or value == int(value):
        return f"{value:,.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"
