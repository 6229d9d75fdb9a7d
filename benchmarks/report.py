"""Turn one run's results into the JSON record, the Markdown table, the PNG chart, the README."""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.metrics import DASH, FLOOR_WORKLOAD, METRICS, Metric, X, speedup
from benchmarks.stats import Summary, fmt

logger = logging.getLogger("benchmarks")

COLORS = {"dbos_async": "#4c72b0", "DBOS": "#dd8452", "floor": "#8c8c8c"}
NUMBER_LIST = re.compile(r"\[[\d\s.,eE+-]*\]")
BEGIN, END = "<!-- bench-table -->", "<!-- /bench-table -->"


@dataclass(frozen=True, slots=True)
class Row:
    """One line of the table: a metric and its summaries on each side."""

    metric: Metric
    ours: Summary | None
    dbos: Summary | None
    floor: Summary | None
    note: str

    @property
    def met(self) -> bool | None:
        """Whether the target is met on the medians; None when it cannot be judged."""
        if self.metric.check is None:
            return None
        return self.metric.check(med(self.ours), med(self.dbos), med(self.floor))


def med(summary: Summary | None) -> float | None:
    """The median of a summary, if there is one."""
    return summary["median"] if summary is not None else None


def _summary(results: dict[str, Any], workload: str, side: str, key: str) -> Summary | None:
    entry = results.get(workload, {}).get(side)
    if not entry:
        return None
    summary: Summary | None = entry.get("summary", {}).get(key)
    return summary


def _note(results: dict[str, Any], workload: str) -> str:
    notes = []
    for side, entry in results.get(workload, {}).items():
        if entry.get("skipped"):
            notes.append(f"{side} skipped: {entry['skipped']}")
        if entry.get("errors"):
            notes.append(f"{side}: {len(entry['errors'])} failed run(s)")
    return "; ".join(notes)


def build_rows(results: dict[str, Any]) -> list[Row]:
    """Rows for every metric of a workload that ran (or was skipped) in this run."""
    rows = []
    for m in METRICS:
        if m.workload not in results:
            continue
        if m.workload == FLOOR_WORKLOAD:
            floor = _summary(results, FLOOR_WORKLOAD, "floor", m.key)
            rows.append(Row(m, None, None, floor, _note(results, m.workload)))
            continue
        floor = _summary(results, FLOOR_WORKLOAD, "floor", m.floor) if m.floor else None
        rows.append(
            Row(
                m,
                _summary(results, m.workload, "dbos_async", m.key),
                _summary(results, m.workload, "dbos", m.key),
                floor,
                _note(results, m.workload),
            )
        )
    return rows


def _cell(summary: Summary | None) -> str:
    if summary is None:
        return "—"
    return f"{fmt(summary['median'])} [{fmt(summary['min'])}{DASH}{fmt(summary['max'])}]"


def markdown_table(rows: list[Row], meta: dict[str, Any]) -> str:
    """The results table, with a line saying where and how it was measured."""
    lines = [
        f"Measured {meta['date']} on {meta['machine']['cpus']} CPUs, "
        f"{meta['postgres']['version_short']}, dbos_async {meta['versions'].get('dbos_async', '?')}"
        f" vs dbos {meta['versions'].get('dbos', 'not run')}; {meta['repeat']} repetitions, "
        f"median [min{DASH}max]; ratio = times better than DBOS."
        + (" **Quick mode: sizes reduced, not quotable.**" if meta["quick"] else ""),
        "",
        "| workload | metric | dbos_async | DBOS | ratio | floor | target | met? |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        m = row.metric
        ratio = speedup(m, med(row.ours), med(row.dbos))
        met = {True: "✅", False: "❌", None: "—"}[row.met] if m.target else ""
        floor = _cell(row.floor) if m.workload == FLOOR_WORKLOAD else fmt(med(row.floor))
        if row.floor is None:
            floor = "—"
        label = f"{m.label} ({m.unit})"
        lines.append(
            f"| {m.workload} | {label} | {_cell(row.ours)} | {_cell(row.dbos)} | "
            f"{f'{ratio:.1f}{X}' if ratio else '—'} | {floor} | {m.target} | {met} |"
        )
    notes = sorted({f"{r.metric.workload}: {r.note}" for r in rows if r.note})
    if notes:
        lines += ["", *(f"- {n}" for n in notes)]
    return "\n".join(lines) + "\n"


def before_after_table(results: dict[str, Any], meta: dict[str, Any]) -> str:
    """dbos_async against an earlier checkout ("before"), measured in the same run."""
    lines = [
        f"Before ({meta['before']}) and after ({meta['git_commit']}), same run, "
        f"median [min{DASH}max]; change = after / before - 1.",
        "",
        "| workload | metric | before | after | change |",
        "|---|---|---|---|---|",
    ]
    for m in METRICS:
        before = _summary(results, m.workload, "before", m.key)
        after = _summary(results, m.workload, "dbos_async", m.key)
        if before is None or after is None:
            continue
        change = med(after) / med(before) - 1 if med(before) else None  # type: ignore[operator]
        lines.append(
            f"| {m.workload} | {m.label} ({m.unit}) | {_cell(before)} | {_cell(after)} | "
            f"{'—' if change is None else f'{change:+.1%}'} |"
        )
    return "\n".join(lines) + "\n"


def write_json(path: Path, record: dict[str, Any]) -> None:
    """The full record: metadata, every run's raw samples, and the summaries."""
    text = json.dumps(record, indent=1, ensure_ascii=False)
    # Lists of numbers (raw samples) on one line each: one number per line would be 10x longer.
    text = NUMBER_LIST.sub(lambda m: re.sub(r"\s+", "", m.group()), text)
    path.write_text(text + "\n", encoding="utf-8")


def write_chart(path: Path, rows: list[Row]) -> bool:
    """One small bar chart per compared metric (dbos_async vs DBOS, min-max whiskers)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        logger.warning("matplotlib is missing: no chart (pip install -e '.[bench]')")
        return False
    shown = [r for r in rows if r.ours is not None or r.dbos is not None]
    if not shown:
        return False
    cols = 4
    nrows = (len(shown) + cols - 1) // cols
    fig, axes = plt.subplots(nrows, cols, figsize=(4 * cols, 3 * nrows), squeeze=False)
    for ax, row in zip(axes.flat, shown, strict=False):
        bars = [
            (n, s)
            for n, s in (("dbos_async", row.ours), ("DBOS", row.dbos), ("floor", row.floor))
            if s is not None
        ]
        values = [s["median"] for _, s in bars]
        ax.bar(
            [n for n, _ in bars],
            values,
            yerr=[
                [s["median"] - s["min"] for _, s in bars],
                [s["max"] - s["median"] for _, s in bars],
            ],
            capsize=4,
            color=[COLORS[n] for n, _ in bars],
        )
        if min(values) > 0 and max(values) / min(values) > 30:
            ax.set_yscale("log")  # else a 100x gap flattens the smaller bar to nothing
        for i, value in enumerate(values):
            ax.annotate(fmt(value), (i, value), ha="center", va="bottom", fontsize=7)
        better = "higher" if row.metric.higher_is_better else "lower"
        ax.set_title(
            f"{row.metric.workload} {row.metric.label}\n({row.metric.unit}, {better} is better)",
            fontsize=9,
        )
        ax.tick_params(labelsize=8)
    for ax in list(axes.flat)[len(shown) :]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True


def splice_readme(readme: Path, table: str) -> None:
    """Replace the text between the bench-table markers in the README."""
    text = readme.read_text(encoding="utf-8")
    pattern = re.compile(re.escape(BEGIN) + r".*?" + re.escape(END), re.DOTALL)
    if not pattern.search(text):
        logger.warning("%s has no %s … %s markers: not updated", readme, BEGIN, END)
        return
    readme.write_text(pattern.sub(lambda _: f"{BEGIN}\n{table}{END}", text), encoding="utf-8")
