"""SVG drawn on the server: the overview's throughput bars and a workflow's step timeline.

No script and no inline style: shapes carry classes (``dashboard.css``
colours them by status) and a ``<title>`` for the tooltip. Every text is
escaped.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime

from markupsafe import Markup, escape

from dbos_async.models import StepInfo
from dbos_async.serialization import type_name

TOOLTIP_CHARS = 300


def _clip(text: str) -> str:
    return text if len(text) <= TOOLTIP_CHARS else text[:TOOLTIP_CHARS] + "…"


STATUSES = (
    "SUCCESS",
    "ERROR",
    "PENDING",
    "ENQUEUED",
    "CANCELLED",
    "MAX_RECOVERY_ATTEMPTS_EXCEEDED",
)


def throughput(buckets: Sequence[Mapping[str, int]], start_ms: int, width: int = 720) -> Markup:
    """Stacked bars, one per clock hour from ``start_ms`` (an hour's start), by status."""
    height, top, bottom = 160, 10, 20
    peak = max((sum(b.values()) for b in buckets), default=0) or 1
    slot = width / max(1, len(buckets))
    parts = [
        f'<svg class="chart" viewBox="0 0 {width} {height}" role="img"'
        ' aria-label="workflows started per hour, by status">'
    ]
    usable = height - top - bottom
    for i, bucket in enumerate(buckets):
        y = float(height - bottom)
        start = start_ms + i * 3600_000
        label = datetime.fromtimestamp(start / 1000, UTC).strftime("%H:00")
        for status in STATUSES:
            n = bucket.get(status, 0)
            if not n:
                continue
            h = usable * n / peak
            y -= h
            parts.append(
                f'<rect class="bar s-{status.lower()}" x="{i * slot + 1:.1f}" y="{y:.1f}"'
                f' width="{max(1.0, slot - 2):.1f}" height="{h:.1f}">'
                f"<title>{escape(label)} UTC: {n} {escape(status)}</title></rect>"
            )
        if i % 4 == 0:
            parts.append(
                f'<text class="axis" x="{i * slot:.1f}" y="{height - 5}">{escape(label)}</text>'
            )
    parts.append(f'<text class="axis" x="2" y="{top + 2}">max {peak}/h</text>')
    parts.append("</svg>")
    return Markup("".join(parts))


def timeline(
    steps: Sequence[StepInfo], now_ms: int, width: int = 720, since: int | None = None
) -> Markup:
    """One bar per recorded call, a lane per branch (the workflow's own first).

    Calls that completed before ``since`` (the workflow's creation: those a
    fork copied from the original) are counted in a note, not drawn, so the
    axis covers this execution only.
    """
    timed = [s for s in steps if s.started_at is not None or s.completed_at is not None]
    copied = [s for s in timed if since is not None and (s.completed_at or now_ms) < since]
    timed = [s for s in timed if s not in copied]
    note = (
        f'<p class="muted">{len(copied)} calls copied from the workflow this one was forked'
        " from are not drawn.</p>"
        if copied
        else ""
    )
    if not timed:
        return Markup(note or '<p class="muted">No timed steps recorded yet.</p>')
    lanes: list[str] = []
    for s in timed:
        if s.branch not in lanes:
            lanes.append(s.branch)
    lanes.sort(key=lambda b: (b != "", [int(p) for p in b.split(".") if p.isdigit()]))
    start = min((s.started_at or s.completed_at or now_ms) for s in timed)
    end = max((s.completed_at or now_ms) for s in timed)
    span = max(1, end - start)
    label_w, row = 90, 22
    height = row * len(lanes) + 24
    scale = (width - label_w - 10) / span
    parts = [
        note,
        f'<svg class="timeline" viewBox="0 0 {width} {height}" role="img"'
        ' aria-label="step timeline, one lane per branch">',
    ]
    for i, lane in enumerate(lanes):
        name = "workflow" if lane == "" else f"branch {lane}"
        parts.append(f'<text class="lane" x="2" y="{i * row + 15}">{escape(name)}</text>')
    for s in timed:
        lane_no = lanes.index(s.branch)
        begin = s.started_at if s.started_at is not None else s.completed_at or now_ms
        finish = s.completed_at if s.completed_at is not None else now_ms
        x = label_w + (begin - start) * scale
        w = max(2.0, (finish - begin) * scale)
        kind = "error" if s.error is not None else "ok"
        attempts = f", {s.attempts} attempts" if s.attempts and s.attempts > 1 else ""
        error = f": {_clip(type_name(s.error) + ': ' + str(s.error))}" if s.error else ""
        tip = f"#{s.step_id} {s.name} ({finish - begin} ms{attempts}){error}"
        parts.append(
            f'<rect class="step {kind}" x="{x:.1f}" y="{lane_no * row + 4}" width="{w:.1f}"'
            f' height="{row - 8}"><title>{escape(tip)}</title></rect>'
        )
        if s.attempts and s.attempts > 1:
            parts.append(
                f'<text class="attempts" x="{x + w + 2:.1f}" y="{lane_no * row + 15}">'
                f"x{s.attempts}</text>"
            )
    parts.append(
        f'<text class="axis" x="{label_w}" y="{height - 4}">0 ms</text>'
        f'<text class="axis" x="{width - 80}" y="{height - 4}">{span} ms</text></svg>'
    )
    return Markup("".join(parts))
