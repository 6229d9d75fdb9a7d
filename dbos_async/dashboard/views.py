"""The dashboard's pages: workflows, a workflow, queues, overview, schedules, executors."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

from cronsim import CronSim
from starlette.requests import Request
from starlette.responses import Response

from dbos_async import management, queue, scheduler, serialization
from dbos_async.dashboard import charts, data
from dbos_async.dashboard.app import Dashboard, dashboard_of, format_when, page
from dbos_async.models import StepInfo, WorkflowStatus
from dbos_async.versions import list_application_versions

STATUSES = (
    "PENDING",
    "ENQUEUED",
    "SUCCESS",
    "ERROR",
    "CANCELLED",
    "MAX_RECOVERY_ATTEMPTS_EXCEEDED",
)
ACTIVE = ("PENDING", "ENQUEUED")
MAX_STEPS_SHOWN = 500
MAX_FILTER_VALUES = 50


# -- the workflow list ------------------------------------------------------------------


def _filter(request: Request) -> tuple[data.ListFilter, dict[str, Any], str | None]:
    """The list's filters from the query string; the form's values; an error to show."""
    params = request.query_params
    error = None

    def many(name: str) -> list[str]:
        nonlocal error
        values = [v for v in params.getlist(name) if v][:MAX_FILTER_VALUES]
        if any(not _plain(v) for v in values):
            error = f"{name}: a value holds a NUL character or is over 1,024 bytes"
            return []
        return values

    def moment(name: str, through_minute: bool = False) -> int | None:
        nonlocal error
        raw = params.get(name) or ""
        if not raw:
            return None
        try:
            parsed = datetime.fromisoformat(raw)
        except ValueError:
            error = f"{name}: {raw!r} is not a date and time (YYYY-MM-DDTHH:MM)"
            return None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)  # the form's times are UTC, as the pages show
        at = int(parsed.timestamp() * 1000)
        if through_minute and len(raw) == 10:  # a date: all of that day
            return at + 86_399_999
        # The form picks minutes: "to 12:03" takes in the whole of that minute.
        return at + 59_999 if through_minute and parsed.second == 0 else at

    statuses = [s for s in many("status") if s in STATUSES]
    flt = data.ListFilter(
        statuses=statuses,
        names=many("name"),
        queues=many("queue"),
        versions=many("version"),
        executors=many("executor"),
        created_from=moment("from"),
        created_to=moment("to", through_minute=True),
        id_prefix=_prefix(params.get("id")),
    )
    if params.get("id") and flt.id_prefix is None:
        error = "ID prefix: it holds a NUL character or is over 1,024 bytes"
    form = {
        "status": statuses,
        # Lists: every value given goes on to the next page and the live refresh.
        "name": flt.names,
        "queue": flt.queues,
        "version": flt.versions,
        "executor": flt.executors,
        "from": params.get("from", ""),
        "to": params.get("to", ""),
        "id": params.get("id", ""),
    }
    return flt, form, error


def _plain(value: str) -> bool:
    return "\x00" not in value and len(value.encode()) <= 1024


def _prefix(value: str | None) -> str | None:
    return value if value and _plain(value) else None


def _after(request: Request) -> tuple[int, str] | None:
    raw = request.query_params.get("after")
    if not raw or ":" not in raw:
        return None
    created, _, workflow_id = raw.partition(":")
    try:
        at = int(created)
    except ValueError:
        return None
    # A forged cursor: out of bigint's range, or an ID no row can have.
    if not -(2**63) <= at < 2**63 or not _plain(workflow_id):
        return None
    return at, workflow_id


def _query(form: dict[str, Any], **extra: str) -> str:
    pairs: list[tuple[str, str]] = []
    for key, value in form.items():
        for v in value if isinstance(value, list) else [value]:
            if v:
                pairs.append((key, str(v)))
    pairs += [(k, v) for k, v in extra.items() if v]
    return urlencode(pairs)


@page
async def workflows(request: Request, dash: Dashboard, principal: str) -> Response:
    """The workflow list (the mount's root): filters, keyset pages, live on the first page."""
    flt, form, error = _filter(request)
    after = _after(request)
    result = await data.list_workflows(dash.source, flt, after)
    next_query = (
        _query(form, after=f"{result.next_after[0]}:{result.next_after[1]}")
        if result.next_after
        else None
    )
    template = "workflow_rows.html" if request.query_params.get("rows") else "workflows.html"
    return dash.render(
        request,
        template,
        page="workflows",
        rows=result.rows,
        form=form,
        statuses=STATUSES,
        error=error,
        next_query=next_query,
        first_page=after is None,
        rows_query=_query(form, rows="1"),
        principal=principal,
    )


# -- one workflow -----------------------------------------------------------------------


def _truncated(text: str | None) -> str | None:
    if text is None or len(text) <= data.PAYLOAD_CHARS:
        return text
    return text[: data.PAYLOAD_CHARS] + f"… ({len(text) - data.PAYLOAD_CHARS} more characters)"


def _show(value: Any) -> str:
    # Decoded payloads, shown as indented JSON (what is not JSON, as its repr).
    text = json.dumps(value, indent=2, default=repr, ensure_ascii=False)
    return _truncated(text) or ""


def _waiting_on(
    status: WorkflowStatus,
    steps: Sequence[StepInfo],
    kids: Sequence[dict[str, Any]],
    position: dict[str, Any] | None,
    now_ms: int,
) -> str | None:
    """What a waiting workflow waits for, from its last recorded call."""
    if status.status.value == "ENQUEUED" and position is not None:
        where = f"position {position['ahead'] + 1} in queue {position['queue_name']}"
        if position["queue_partition_key"] is not None:
            where += f" (partition {position['queue_partition_key']})"
        if position["not_before"] is not None and position["not_before"] > now_ms:
            where += f", not before {format_when(position['not_before'])}"
        return where
    if status.status.value != "PENDING" or not steps:
        return None
    last = max(steps, key=lambda s: (s.completed_at or 0, s.step_id))
    if last.name in ("DBOS.sleep", "DBOS.recv deadline", "DBOS.get_event deadline"):
        until = last.output if isinstance(last.output, int | float) else None
        if until is not None and until * 1000 > now_ms:
            what = {
                "DBOS.sleep": "sleep",
                "DBOS.recv deadline": "a message (recv)",
                "DBOS.get_event deadline": "an event (get_event)",
            }[last.name]
            return f"{what} until {format_when(until * 1000)}"
    if last.child_workflow_id is not None:
        child = next((k for k in kids if k["workflow_id"] == last.child_workflow_id), None)
        if child is not None and child["status"] in ACTIVE:
            return f"child workflow {last.child_workflow_id} ({child['status']})"
    return None


async def _workflow_context(dash: Dashboard, workflow_id: str) -> dict[str, Any] | None:
    if not _plain(workflow_id):
        return None  # no workflow has such an ID
    source = dash.source
    status = await source.call("get_workflow_status", workflow_id)
    if status is None:
        return None
    steps: list[StepInfo] = await management.list_workflow_steps(source.pool, workflow_id)
    kids = await data.children(source, workflow_id)
    position = await data.queue_position(source, workflow_id)
    now_ms = source.clock.now_ms()
    versions = await list_application_versions(source.pool, source.clock)
    # A long history shows its last calls (a live page re-renders on each change).
    shown = steps[-MAX_STEPS_SHOWN:]
    step_rows = [
        {
            "step": s,
            "error": _error_text(s.error) if s.error is not None else None,
            "output": _show(s.output) if s.output is not None else None,
        }
        for s in shown
    ]
    return {
        "step_rows": step_rows,
        "hidden_steps": len(steps) - len(shown),
        "events": await data.events(source, workflow_id),
        "streams": await data.streams(source, workflow_id),
        "versions": [v.version for v in versions],
        "wf": status,
        "steps": steps,
        "children": kids,
        "waiting_on": _waiting_on(status, steps, kids, position, now_ms),
        "timeline": charts.timeline(
            shown, now_ms, since=status.created_at if status.forked_from else None
        ),
        "active": status.status.value in ACTIVE,
        "inputs": _show(status.input),
        "output": _show(status.output) if status.output is not None else None,
        "error": _error_text(status.error) if status.error is not None else None,
        "traceback": (
            _truncated(serialization.recorded_traceback(status.error)) or None
            if status.error is not None
            else None
        ),
    }


def _error_text(error: BaseException) -> str:
    text = f"{serialization.type_name(error)}: {serialization.error_message(error)}"
    return _truncated(text) or ""


@page
async def workflow(request: Request, dash: Dashboard, principal: str) -> Response:
    """A workflow: status, payloads, timeline, waiting on, events, streams, actions."""
    workflow_id = request.path_params["workflow_id"]
    context = await _workflow_context(dash, workflow_id)
    if context is None:
        return dash.render(
            request,
            "not_found.html",
            status_code=404,
            page="workflows",
            workflow_id=workflow_id,
            principal=principal,
        )
    return dash.render(request, "workflow.html", page="workflows", principal=principal, **context)


@page
async def workflow_live(request: Request, dash: Dashboard, principal: str) -> Response:
    """The live part of a workflow's page (status, waiting on, timeline), for refreshes."""
    context = await _workflow_context(dash, request.path_params["workflow_id"])
    if context is None:
        return Response(status_code=404)
    return dash.render(request, "workflow_live.html", **context)


# -- queues, overview, schedules, executors ---------------------------------------------


@page
async def queues(request: Request, dash: Dashboard, principal: str) -> Response:
    """Per queue: work against its limits, the oldest waiting, the queued workflows."""
    rows = {r["queue_name"]: r for r in await data.queues(dash.source)}
    declared = {q.name: q for q in queue.registered_queues()}
    names = sorted(set(rows) | {n for n in declared if not n.startswith("_")})
    listed = []
    for name in names:
        waiting = await management.list_queued_workflows(
            dash.source.pool, queue_name=name, limit=20, sort_desc=False, load_input=False
        )
        listed.append(
            {"name": name, "stats": rows.get(name), "queue": declared.get(name), "waiting": waiting}
        )
    return dash.render(request, "queues.html", page="queues", queues=listed, principal=principal)


@page
async def overview(request: Request, dash: Dashboard, principal: str) -> Response:
    """Counts by status, starts per hour, recent failures, stranded versions."""
    now_ms = dash.source.clock.now_ms()
    found = await data.overview(dash.source, now_ms)
    versions = await list_application_versions(dash.source.pool, dash.source.clock)
    return dash.render(
        request,
        "overview.html",
        page="overview",
        o=found,
        statuses=STATUSES,
        chart=charts.throughput(found.buckets, found.start_ms),
        stranded=[v for v in versions if v.stranded],
        principal=principal,
    )


@page
async def schedules(request: Request, dash: Dashboard, principal: str) -> Response:
    """Schedules: the ones declared in this process and every one that ticked."""
    ticks = await data.schedule_ticks(dash.source)
    now = dash.source.clock.now()
    listed = []
    declared = {s.name: s for s in scheduler.schedules()}
    for name in sorted(set(ticks) | set(declared)):
        s = declared.get(name)
        listed.append(
            {
                "name": name,
                "cron": s.cron if s is not None else None,
                "catch_up": s.catch_up if s is not None else None,
                "next_tick": next(CronSim(s.cron, now)) if s is not None else None,
                "last_tick_ms": ticks.get(name),
            }
        )
    return dash.render(
        request, "schedules.html", page="schedules", schedules=listed, principal=principal
    )


@page
async def executors(request: Request, dash: Dashboard, principal: str) -> Response:
    """Runtime instances (heartbeat age, version, PENDING) and app versions."""
    return dash.render(
        request,
        "executors.html",
        page="executors",
        instances=await data.instances(dash.source),
        versions=await list_application_versions(dash.source.pool, dash.source.clock),
        principal=principal,
    )


async def login(request: Request) -> Response:
    """``login?token=...``: a session cookie for a valid token, then the dashboard."""
    dash = dashboard_of(request)
    return dash.guard.login(
        request, request.query_params.get("token", ""), str(request.url_for("workflows"))
    )
