"""How ``dbos-async`` prints records.

Aligned tables and ``key: value`` lines for people, JSON for scripts. Times
are ISO 8601 in the local time zone, with its offset, for people; epoch
milliseconds in JSON. Errors go by the qualified name of the type they were
raised as, which the CLI, without the application's code, cannot rebuild.
Everything printed for people goes through ``say`` or ``print_table``, which
escape control characters: IDs, names and errors come from the database, and
a terminal would obey an escape sequence hidden in one. JSON escapes them itself.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import click
import orjson

from dbos_async.messaging import GET_EVENT_DEADLINE, RECV_DEADLINE
from dbos_async.models import AppVersion, StepInfo, WorkflowStatus, WorkflowStatusString
from dbos_async.serialization import error_message, recorded_traceback, type_name

# C0 and C1 controls and DEL as \xNN; the bidirectional overrides, which can
# make text read as something else, as \uNNNN.
_ESCAPES = {c: f"\\x{c:02x}" for c in (*range(0x20), 0x7F, *range(0x80, 0xA0))}
_ESCAPES |= {c: f"\\u{c:04x}" for c in (*range(0x202A, 0x202F), *range(0x2066, 0x206A))}


def escape(text: str) -> str:
    """``text`` with every control character written out, so a terminal only shows it."""
    return text.translate(_ESCAPES)


def say(text: str, *, err: bool = False) -> None:
    """Print one line for people, its control characters escaped."""
    click.echo(escape(text), err=err)


def time_text(ms: int | float | None) -> str:
    """Epoch milliseconds as ISO 8601 in the local time zone, with its offset; "" for None."""
    if ms is None:
        return ""
    when = datetime.fromtimestamp(ms / 1000, UTC).astimezone()
    return when.isoformat(timespec="milliseconds")


def error_text(error: BaseException | None) -> str:
    """``module.Type: message`` of a recorded error; "" for None."""
    return "" if error is None else f"{type_name(error)}: {error_message(error)}"


def plain(value: Any) -> Any:
    """A JSON-ready copy of a record (exceptions become type, message and traceback)."""
    if isinstance(value, BaseException):
        return {
            "type": type_name(value),
            "message": error_message(value),
            "traceback": recorded_traceback(value),
        }
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value


def print_json(value: Any) -> None:
    """Print a record (or a list of them) as indented JSON."""
    text = orjson.dumps(plain(value), default=str, option=orjson.OPT_INDENT_2).decode()
    click.echo(text)


def compact(value: Any, width: int = 60) -> str:
    """A value as one line of JSON, cut to ``width`` characters."""
    text = orjson.dumps(value, default=str).decode()
    return text if len(text) <= width else text[: width - 1] + "…"


def print_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """Print rows under headers, each column as wide as its widest cell (cells escaped)."""
    rows = [[escape(cell) for cell in row] for row in rows]
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(headers)]
    for line in [headers, *rows]:
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip())


def print_statuses(statuses: list[WorkflowStatus], as_json: bool) -> None:
    """Print workflows as a table, or as JSON."""
    if as_json:
        print_json(statuses)
        return
    if not statuses:
        say("no workflows")
        return
    headers = ["WORKFLOW ID", "STATUS", "NAME", "QUEUE", "EXECUTOR", "APP VERSION", "CREATED"]
    rows = [
        [
            s.workflow_id,
            s.status.value,
            s.name,
            s.queue_name or "",
            s.executor_id or "",
            s.app_version or "",
            time_text(s.created_at),
        ]
        for s in statuses
    ]
    print_table(headers, rows)


def print_status(status: WorkflowStatus, as_json: bool) -> None:
    """Print every field of one workflow as ``key: value`` lines, or as JSON.

    A recorded error is followed by the traceback recorded with it.
    """
    if as_json:
        print_json(status)
        return
    for field in dataclasses.fields(status):
        value = getattr(status, field.name)
        if field.name in ("created_at", "updated_at", "deadline_epoch_ms") and value is not None:
            text = f"{time_text(value)} ({value})"
        elif field.name in ("input", "output"):
            text = "" if value is None else orjson.dumps(value, default=str).decode()
        elif field.name == "error":
            text = error_text(value)
        elif field.name == "status":
            text = value.value
        else:
            text = "" if value is None else str(value)
        say(f"{field.name + ':':<20}{text}".rstrip())
    trace = recorded_traceback(status.error) if status.error is not None else ""
    if trace:
        say("traceback:")
        for line in trace.rstrip("\n").splitlines():
            say(f"  {line}")


def print_steps(steps: list[StepInfo], as_json: bool) -> None:
    """Print a workflow's steps as a table, or as JSON.

    The steps come in tree order (see ``list_workflow_steps``). When the
    workflow ran concurrent branches, a BRANCH column names each step's branch
    and its name is indented by the branch's depth, so the table reads as the
    tree: a branch's steps sit just before the step its creator made next.
    A durable sleep or deadline shows the time it wakes at; ATTEMPTS, how
    many times a step's body ran (blank for calls without a body).
    """
    if as_json:
        print_json(steps)
        return
    if not steps:
        say("no steps recorded")
        return
    branched = any(s.branch for s in steps)
    headers = ["STEP", "NAME", "OUTCOME", "ATTEMPTS", "CHILD WORKFLOW", "STARTED", "MS"]
    if branched:
        headers.insert(0, "BRANCH")
    rows = []
    for s in steps:
        took = (s.completed_at or 0) - (s.started_at or 0) if s.started_at is not None else None
        depth = s.branch.count(".") + 1 if s.branch else 0
        row = [
            str(s.step_id),
            "  " * depth + s.name,
            step_outcome(s),
            "" if s.attempts is None else str(s.attempts),
            s.child_workflow_id or "",
            time_text(s.started_at),
            "" if took is None else str(took),
        ]
        rows.append([s.branch or "-", *row] if branched else row)
    print_table(headers, rows)


_TIMERS = frozenset({"DBOS.sleep", RECV_DEADLINE, GET_EVENT_DEADLINE})


def step_outcome(step: StepInfo) -> str:
    """What a step returned or raised, in one line; a timer's wake-up as a time."""
    if step.error is not None:
        return f"error: {error_text(step.error)}"
    if step.name in _TIMERS:
        # Recorded as epoch seconds; null is a wait without a deadline.
        wake = step.output
        if wake is None:
            return "no deadline"
        if isinstance(wake, int | float):
            return f"until {time_text(wake * 1000)}"
    return compact(step.output)


def started(
    verb: str, original_id: str, status: WorkflowStatus, as_json: bool, runners: int | None
) -> None:
    """Report a workflow started from another (restart, fork): where it will run.

    ``runners`` is how many live runtimes could dequeue it (None: not asked).
    """
    if as_json:
        print_json(status)
        return
    say(f"{verb} {original_id} as {status.workflow_id} ({waiting(status, runners)})")


def waiting(status: WorkflowStatus, runners: int | None) -> str:
    """Where an enqueued workflow waits, and whether anything will run it."""
    if status.status is not WorkflowStatusString.ENQUEUED or runners is None:
        return status.status.value
    version = status.app_version or "any"
    if runners == 0:
        return (
            f"ENQUEUED on {status.queue_name}; no runtime of app version {version} is "
            "running, so it waits until one starts"
        )
    return f"ENQUEUED on {status.queue_name} for a runtime of app version {version}"


def print_versions(versions: list[AppVersion], as_json: bool) -> None:
    """Print app versions as a table (the latest marked, stranded work flagged), or as JSON."""
    if as_json:
        print_json([{**plain(v), "stranded": v.stranded} for v in versions])
        return
    if not versions:
        say("no app versions registered")
        return
    headers = ["APP VERSION", "LATEST", "LIVE", "PENDING", "ENQUEUED", "FIRST SEEN", "LAST SEEN"]
    rows = [
        [
            v.version,
            "yes" if v.is_latest else "",
            str(v.live_executors),
            str(v.pending),
            str(v.enqueued),
            time_text(v.first_seen),
            time_text(v.last_seen),
        ]
        for v in versions
    ]
    print_table(headers, rows)
    for v in versions:
        if v.stranded:
            say(
                f"{v.stranded} workflows of {v.version} are stranded (no runtime of it runs): "
                f"start one, or `dbos-async workflow adopt --from-version {v.version} "
                "--only-compatible --app MODULE:OBJ`"
            )
