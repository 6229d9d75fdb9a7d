"""Run the benchmarks: dbos_async, the floor and (``--compare``) DBOS, side by side.

    python -m benchmarks.run [--compare] [--quick] [--only W1,W2] [--repeat 3]

Each workload runs ``--repeat`` times per side, the sides interleaved within
each repetition so that drift in the machine's load hits them alike. Progress
goes to stderr; results go to ``benchmarks/results/``. A complete run (not
``--quick``, no ``--only``) also writes the table into README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import logging
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks import report
from benchmarks.harness import SIZES
from benchmarks.metrics import FLOOR_WORKLOAD, METRICS
from benchmarks.processes import ROOT, MeasurementError, Side, measure, server_info
from benchmarks.stats import fmt, summarize_runs

logger = logging.getLogger("benchmarks")

RESULTS = ROOT / "benchmarks" / "results"
WORKLOADS = ("W1", "W2", "W3", "W4", "W5", "W6", "W7", "W8", FLOOR_WORKLOAD)
# Floor figures that the targets of these workloads are judged against.
NEEDS_FLOOR = frozenset({"W2", "W3", "W4", "W5"})
DEFAULT_SERVER = "postgresql://postgres@127.0.0.1:5432/postgres"


def sides(compare: bool, baseline_python: str, before: Path | None = None) -> list[Side]:
    """The sides to measure, in the order they run within a repetition."""
    ours = frozenset(w for w in SIZES if w != FLOOR_WORKLOAD)
    command = (sys.executable, "-m", "benchmarks.workloads_dbos_async")
    found = [
        Side("dbos_async", command, ours),
        Side("floor", (sys.executable, "-m", "benchmarks.floor"), frozenset({FLOOR_WORKLOAD})),
    ]
    if compare:
        baseline = frozenset(ours - {"W8"})  # W8's target is absolute; dbos has no twin run
        found.insert(1, Side("dbos", (baseline_python, "-m", "benchmarks.baseline_dbos"), baseline))
    if before is not None:
        # Run from that checkout, so its own dbos_async (and workloads) are imported.
        found.insert(1, Side("before", command, ours, cwd=before))
    return found


def parse_args(argv: list[str]) -> argparse.Namespace:
    """The runner's command line."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__)
    parser.add_argument("--compare", action="store_true", help="also run DBOS (.venv-dbos)")
    parser.add_argument("--quick", action="store_true", help="small sizes: validate the harness")
    parser.add_argument("--only", default="", help="comma-separated workloads, e.g. W1,W2,F")
    parser.add_argument("--repeat", type=int, default=3, help="repetitions per side (≥ 3 to quote)")
    parser.add_argument(
        "--server-url",
        default=os.environ.get("BENCH_DATABASE_URL", DEFAULT_SERVER),
        help="a Postgres URL with rights to CREATE DATABASE ($BENCH_DATABASE_URL)",
    )
    parser.add_argument("--baseline-python", default=str(ROOT / ".venv-dbos" / "bin" / "python"))
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per child process")
    parser.add_argument(
        "--before",
        type=Path,
        help="another checkout (e.g. a git worktree of an earlier commit) measured as the "
        "side 'before', interleaved with dbos_async, for a change's before/after",
    )
    ns = parser.parse_args(argv)
    only = [w.strip().upper() for w in ns.only.split(",") if w.strip()]
    unknown = sorted(set(only) - set(WORKLOADS))
    if unknown:
        parser.error(f"unknown workloads {unknown}; known: {', '.join(WORKLOADS)}")
    if ns.repeat < 1:
        parser.error("--repeat must be at least 1")
    if ns.compare and not Path(ns.baseline_python).exists():
        parser.error(f"{ns.baseline_python} is missing: run bash benchmarks/setup_baseline.sh")
    if (
        ns.before is not None
        and not (ns.before / "benchmarks" / "workloads_dbos_async.py").exists()
    ):
        parser.error(f"{ns.before} is not a dbos_async checkout with benchmarks/")
    ns.only = only
    return ns


def selected(only: list[str]) -> list[str]:
    """The workloads to run, adding the floor when a selected target is judged against it."""
    chosen = set(only or WORKLOADS)
    if chosen & NEEDS_FLOOR:
        chosen.add(FLOOR_WORKLOAD)
    return [w for w in WORKLOADS if w in chosen]


def headline(workload: str, metrics: dict[str, Any]) -> str:
    """A few of a run's figures, for the progress line."""
    keys = [m.key for m in METRICS if m.workload == workload and m.key in metrics][:3]
    return ", ".join(f"{k}={fmt(float(metrics[k]))}" for k in keys)


async def run_all(ns: argparse.Namespace) -> dict[str, Any]:
    """Every selected workload, side and repetition; returns the per-workload results."""
    plan = [
        (w, side)
        for w in selected(ns.only)
        for side in sides(ns.compare, ns.baseline_python, ns.before)
        if w in side.workloads
    ]
    total = len(plan) * ns.repeat
    results: dict[str, Any] = {}
    done = 0
    started = time.perf_counter()
    for workload in dict.fromkeys(w for w, _ in plan):
        entries: dict[str, dict[str, Any]] = {
            s.name: {"runs": [], "errors": [], "skipped": None} for w, s in plan if w == workload
        }
        results[workload] = entries
        for rep in range(1, ns.repeat + 1):
            # Every other repetition runs the sides in reverse order, so neither
            # gains from its place (a database dropped just before, a warm cache).
            order = plan if rep % 2 else plan[::-1]
            for w, side in order:
                if w != workload:
                    continue
                entry = entries[side.name]
                done += 1
                if entry["skipped"]:
                    continue
                prefix = f"[{done:>3}/{total}] {workload} {side.name:<10} rep {rep}/{ns.repeat}"
                print(f"{prefix} …", file=sys.stderr, flush=True)
                t0 = time.perf_counter()
                try:
                    result = await measure(side, workload, ns.server_url, ns.quick, ns.timeout)
                except MeasurementError as exc:
                    entry["errors"].append(str(exc))
                    print(f"{prefix} FAILED: {exc}", file=sys.stderr, flush=True)
                    continue
                if result.get("skipped"):
                    entry["skipped"] = result["skipped"]
                    print(f"{prefix} skipped: {result['skipped']}", file=sys.stderr, flush=True)
                    continue
                entry["runs"].append(result)
                print(
                    f"{prefix} {time.perf_counter() - t0:5.1f}s  "
                    f"{headline(workload, result.get('metrics', {}))}",
                    file=sys.stderr,
                    flush=True,
                )
        for entry in entries.values():
            entry["summary"] = summarize_runs([r["metrics"] for r in entry["runs"]])
    minutes = (time.perf_counter() - started) / 60
    print(f"done: {total} measurements in {minutes:.1f} min", file=sys.stderr, flush=True)
    return results


def git_commit(checkout: Path = ROOT) -> str:
    """The commit measured, marked ``-dirty`` when the tree has changes."""
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=checkout,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=checkout,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "?"
    return rev + ("-dirty" if dirty else "")


def machine() -> dict[str, Any]:
    """What the figures were measured on; the load average says how noisy it was."""
    model = "?"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            model = next(
                (ln.split(":", 1)[1].strip() for ln in cpuinfo if ln.startswith("model name")), "?"
            )
    except OSError:
        pass
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "loadavg_start": os.getloadavg(),
    }


def versions(results: dict[str, Any]) -> dict[str, str]:
    """Package versions as each side's processes reported them."""
    found: dict[str, str] = {}
    for entries in results.values():
        for entry in entries.values():
            for run in entry["runs"]:
                found.update(run.get("versions", {}))
    return found


def outputs(ns: argparse.Namespace, today: str) -> tuple[Path, Path, Path]:
    """Where this run writes; quick or partial runs never overwrite a complete run's files."""
    tag = "quick" if ns.quick else ("partial" if ns.only else "")
    stem = f"{today}-{tag}" if tag else today
    latest = f"latest-{tag}" if tag else "latest"
    return RESULTS / f"{stem}.json", RESULTS / f"{latest}.md", RESULTS / f"{latest}.png"


async def amain(ns: argparse.Namespace) -> int:
    """Measure, then write the record, the table, the chart and (complete runs) the README."""
    today = datetime.date.today().isoformat()
    meta: dict[str, Any] = {
        "date": today,
        "started_at": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "quick": ns.quick,
        "only": ns.only,
        "repeat": ns.repeat,
        "compare": ns.compare,
        "git_commit": git_commit(),
        "machine": machine(),
        "postgres": await server_info(ns.server_url),
        "sizes": {w: {k: v[1 if ns.quick else 0] for k, v in s.items()} for w, s in SIZES.items()},
    }
    results = await run_all(ns)
    meta["machine"]["loadavg_end"] = os.getloadavg()
    meta["versions"] = versions(results)
    rows = report.build_rows(results)
    table = report.markdown_table(rows, meta)
    if ns.before is not None:
        meta["before"] = git_commit(ns.before)
        table += "\n" + report.before_after_table(results, meta)
    json_path, md_path, png_path = outputs(ns, today)
    RESULTS.mkdir(parents=True, exist_ok=True)
    summary = {
        f"{r.metric.workload}.{r.metric.key}": {
            "dbos_async": r.ours,
            "dbos": r.dbos,
            "floor": r.floor,
            "met": r.met,
        }
        for r in rows
    }
    report.write_json(json_path, {"meta": meta, "summary": summary, "results": results})
    md_path.write_text(table, encoding="utf-8")
    charted = report.write_chart(png_path, rows)
    if not ns.quick and not ns.only:
        report.splice_readme(ROOT / "README.md", table)
    print(table, file=sys.stderr)
    written = [json_path, md_path] + ([png_path] if charted else [])
    print("wrote " + ", ".join(str(p.relative_to(ROOT)) for p in written), file=sys.stderr)
    failed = any(e["errors"] for entries in results.values() for e in entries.values())
    return 1 if failed else 0


def main() -> None:
    """Entry point: ``python -m benchmarks.run``."""
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
    sys.exit(asyncio.run(amain(parse_args(sys.argv[1:]))))


if __name__ == "__main__":
    main()
