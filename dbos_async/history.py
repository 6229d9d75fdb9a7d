r"""Portable workflow histories: export them to a JSON file, load them, import them.

A history is everything the database recorded for one workflow: its row, the
calls it recorded (steps, sleeps, messages, events, child workflows, in every
branch), the events it set, the stream entries it wrote and the messages sent
to it. ``dbos-async workflow export ID...`` writes histories to a file,
``dbos-async workflow import FILE`` records them in another database, and
``load_histories`` reads a file into ``WorkflowHistory`` objects (as
``read_histories`` reads them from a database), so a test suite can keep
histories and check new code against them.

The file, format version 1 (every time is epoch milliseconds)::

    {"format": "dbos-async-history", "format_version": 1, "exported_at": 1767225600000,
     "workflows": [
       {"workflow": {"workflow_id": "order-42", "status": "SUCCESS", "name": "shop.checkout",
                     "inputs": "{\"args\":[42],\"kwargs\":{}}", "output": "\"paid\"",
                     "error": null, ..., "branched_steps": true},
        "calls": [{"branch": "", "step_id": 0, "origin": null,
                   "function_name": "shop.charge", "output": "\"ch_1\"", "error": null,
                   "child_workflow_id": null, "started_at": ..., "completed_at": ...,
                   "attempts": 1, "label": null}, ...],
        "events": [{"key": "state", "value": "\"paid\"", "updated_at": ...}],
        "streams": [{"key": "log", "offset": 0, "value": "\"hi\"", "created_at": ...,
                     "closed": false}],
        "messages": [{"topic": "", "payload": "1", "created_at": ..., "consumed_at": ...,
                      "idempotency_key": null}]}]}

* ``workflow`` holds the columns of ``workflow_status`` that say what ran and
  how (the fields of ``RecordedWorkflow``); not the runtime's own bookkeeping
  (``fence``, ``claimed_by``, ``enqueue_seq``), which belongs to one database.
* Payloads (``inputs``, ``output``, ``error``, ``value``, ``payload``) are the
  JSON *text* ``dbos_async.serialization`` stored, kept as strings, so export
  then import writes the same bytes.
* ``calls``: branch ``""`` is the workflow's own sequence (``origin`` null);
  any other branch (``"0"``, ``"2.1"``, see ``0006_branches.sql``) has the
  ``origin`` recorded with it. Listed in tree order, as ``workflow steps``.
* Messages keep their order but not their ``message_id``, which a database assigns.
* Every key is written. A reader of version 1 requires ``format``,
  ``format_version``, ``workflows``, and in each workflow the ``workflow``
  object with its ``workflow_id``, ``status``, ``name``, ``created_at``,
  ``updated_at`` and ``branched_steps``; a missing list is empty, any other
  missing field null (``recovery_attempts`` and ``priority`` 0, ``closed``
  false, ``branch`` ``""``). An unknown key is an error, not ignored: a file
  that says more than this version knows is refused rather than imported in
  part. Any change to the fields is a new ``format_version``.

Importing an unfinished workflow (PENDING or ENQUEUED) as it is, the default,
moves its work: an ENQUEUED one joins the end of its queue, and a PENDING one
is recovered by the next launch under its executor ID, or adopted by any
runtime of its app version if no live runtime has that executor ID (it has no
claimant in the new database). Stop it in the old database first (``workflow
cancel``), or it runs in both. ``unfinished="cancel"`` imports such workflows
as CANCELLED instead, to inspect or replay them without running them;
``workflow resume`` runs one later.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

import asyncpg
import orjson

from dbos_async.clock import now_ms
from dbos_async.errors import DBOSError, WorkflowNotFoundError
from dbos_async.models import WorkflowStatusString
from dbos_async.systemdb import history as history_table
from dbos_async.systemdb.pool import Pool, acquire, run_idempotent

FORMAT = "dbos-async-history"
"""The ``format`` of every history file."""

FORMAT_VERSION = 1
"""The ``format_version`` this release writes, and the newest it reads."""

Unfinished = Literal["keep", "cancel"]
"""What ``import_histories`` does with PENDING and ENQUEUED workflows."""


class HistoryConflictError(DBOSError):
    """The database already holds what the import would record: nothing was imported."""

    def __init__(self, workflow_ids: Sequence[str], message: str | None = None) -> None:
        self.workflow_ids = tuple(workflow_ids)
        shown = ", ".join(repr(i) for i in self.workflow_ids[:5])
        more = f" and {len(self.workflow_ids) - 5} more" if len(self.workflow_ids) > 5 else ""
        super().__init__(
            message or f"Already recorded in this database: {shown}{more}; nothing was imported"
        )


@dataclass(frozen=True, slots=True)
class RecordedWorkflow:
    """A workflow's row: what ran, with which inputs, and how it ended."""

    # The order of the columns of insert_histories.
    workflow_id: str
    status: WorkflowStatusString
    name: str
    inputs: str | None = None
    output: str | None = None
    error: str | None = None
    app_name: str | None = None
    app_version: str | None = None
    executor_id: str | None = None
    created_at: int = 0
    updated_at: int = 0
    recovery_attempts: int = 0
    queue_name: str | None = None
    parent_workflow_id: str | None = None
    forked_from: str | None = None
    deduplication_id: str | None = None
    priority: int = 0
    timeout_ms: int | None = None
    deadline_epoch_ms: int | None = None
    started_at: int | None = None
    queue_partition_key: str | None = None
    not_before: int | None = None
    branched_steps: bool = True


@dataclass(frozen=True, slots=True)
class RecordedCall:
    """One recorded durable call, identified by ``(branch, step_id)``."""

    branch: str
    step_id: int
    origin: int | None
    function_name: str
    output: str | None = None
    error: str | None = None
    child_workflow_id: str | None = None
    started_at: int | None = None
    completed_at: int | None = None
    attempts: int | None = None
    label: str | None = None


@dataclass(frozen=True, slots=True)
class RecordedEvent:
    """The latest value of one event the workflow set."""

    key: str
    value: str
    updated_at: int


@dataclass(frozen=True, slots=True)
class RecordedStreamEntry:
    """One entry of a stream the workflow wrote (``closed``: the stream's end, no value)."""

    key: str
    offset: int
    value: str | None
    created_at: int
    closed: bool = False


@dataclass(frozen=True, slots=True)
class RecordedMessage:
    """A message sent to the workflow (``consumed_at`` None: not received yet)."""

    topic: str
    payload: str
    created_at: int
    consumed_at: int | None = None
    idempotency_key: str | None = None


@dataclass(frozen=True, slots=True)
class WorkflowHistory:
    """Everything recorded for one workflow."""

    workflow: RecordedWorkflow
    calls: tuple[RecordedCall, ...] = ()
    events: tuple[RecordedEvent, ...] = ()
    streams: tuple[RecordedStreamEntry, ...] = ()
    messages: tuple[RecordedMessage, ...] = ()

    @property
    def workflow_id(self) -> str:
        """The workflow's ID."""
        return self.workflow.workflow_id


# -- from and to a database ------------------------------------------------------------------


async def read_histories(
    pool: Pool, workflow_ids: Sequence[str], *, with_children: bool = False
) -> list[WorkflowHistory]:
    """The histories of these workflows (and of their descendants, ``with_children``).

    The IDs given come first, in their order, then the descendants, oldest
    first. One statement, so one consistent snapshot.

    Raises:
        WorkflowNotFoundError: an ID is not recorded (it names them all).
    """
    # Not check_workflow_id: what is recorded may exceed today's limits (a child's
    # ID is its parent's plus a suffix).
    if isinstance(workflow_ids, str) or not all(isinstance(i, str) for i in workflow_ids):
        raise ValueError("workflow_ids must be a sequence of strings")
    wanted = list(dict.fromkeys(workflow_ids))
    if not wanted:
        return []
    rows = await run_idempotent(
        pool, lambda conn: history_table.select_histories(conn, wanted, with_children)
    )
    found = {row["workflow_id"] for row in rows}
    missing = [i for i in wanted if i not in found]
    if missing:
        listed = ", ".join(repr(i) for i in missing)
        raise WorkflowNotFoundError(
            missing[0], f"No workflow is recorded under ID {listed}; nothing was exported"
        )
    return [_history_from_row(row) for row in rows]


def _history_from_row(row: dict[str, Any]) -> WorkflowHistory:
    columns = {f.name: row[f.name] for f in dataclasses.fields(RecordedWorkflow)}
    columns["status"] = WorkflowStatusString(columns["status"])
    return WorkflowHistory(
        RecordedWorkflow(**columns),
        tuple(RecordedCall(**c) for c in row["calls"]),
        tuple(RecordedEvent(**e) for e in row["events"]),
        tuple(RecordedStreamEntry(**s) for s in row["stream_entries"]),
        tuple(RecordedMessage(**m) for m in row["received_messages"]),
    )


async def export_histories(
    pool: Pool, workflow_ids: Sequence[str], *, with_children: bool = False
) -> dict[str, Any]:
    """The history file of these workflows, as a JSON-ready dict (see ``read_histories``)."""
    return to_document(await read_histories(pool, workflow_ids, with_children=with_children))


async def import_histories(
    pool: Pool, histories: Sequence[WorkflowHistory], *, unfinished: Unfinished = "keep"
) -> list[str]:
    """Record these histories in the database, all or nothing; returns their IDs.

    ``unfinished``: ``"keep"`` imports PENDING and ENQUEUED workflows as they
    are, to run in this database; ``"cancel"`` imports them as CANCELLED (see
    the module docstring). One statement: a lost connection may leave it
    unknown whether it committed, so it is not retried.

    Raises:
        HistoryConflictError: a workflow ID is already recorded here, or a live
            deduplication ID or a message's idempotency key is taken.
        ValueError: the histories break a rule ``load_histories`` checks (two
            share a workflow ID, a call's branch and origin disagree, ...), or
            ``unfinished`` is unknown.
    """
    if unfinished not in ("keep", "cancel"):
        raise ValueError(f"unfinished must be 'keep' or 'cancel', got {unfinished!r}")
    for n, history in enumerate(histories):
        _check_history(history, f"histories[{n}]")
    _check_across(histories, "histories")
    if not histories:
        return []
    if unfinished == "cancel":
        histories = [_cancelled(h) for h in histories]
    columns = history_table.HistoryColumns(
        _columns(RecordedWorkflow, [h.workflow for h in histories]),
        _owned_columns(RecordedCall, [(h.workflow_id, c) for h in histories for c in h.calls]),
        _owned_columns(RecordedEvent, [(h.workflow_id, e) for h in histories for e in h.events]),
        _owned_columns(
            RecordedStreamEntry, [(h.workflow_id, s) for h in histories for s in h.streams]
        ),
        _owned_columns(
            RecordedMessage, [(h.workflow_id, m) for h in histories for m in h.messages]
        ),
    )
    try:
        async with acquire(pool) as conn:
            imported, taken = await history_table.insert_histories(conn, columns)
    except asyncpg.UniqueViolationError as exc:
        # Translated by the index violated (constraint_name), never by message text.
        reason = _CONFLICTS.get(getattr(exc, "constraint_name", None) or "")
        if reason is None:
            raise
        detail = getattr(exc, "detail", None) or exc
        raise HistoryConflictError((), f"{reason}: {detail}; nothing was imported") from exc
    if taken:
        order = {h.workflow_id: n for n, h in enumerate(histories)}
        raise HistoryConflictError(sorted(taken, key=order.__getitem__))
    done = set(imported)
    return [h.workflow_id for h in histories if h.workflow_id in done]


_UNFINISHED = (WorkflowStatusString.PENDING, WorkflowStatusString.ENQUEUED)


def _cancelled(history: WorkflowHistory) -> WorkflowHistory:
    if history.workflow.status not in _UNFINISHED:
        return history
    row = dataclasses.replace(history.workflow, status=WorkflowStatusString.CANCELLED)
    return dataclasses.replace(history, workflow=row)


def _columns(cls: type[Any], records: Sequence[Any]) -> tuple[list[Any], ...]:
    """One list per field of ``cls``, in field order (the statement's column order)."""
    return tuple([_plain(getattr(r, f.name)) for r in records] for f in dataclasses.fields(cls))


def _owned_columns(cls: type[Any], rows: Sequence[tuple[str, Any]]) -> tuple[list[Any], ...]:
    """The owning workflow's ID, then ``_columns``."""
    return ([owner for owner, _ in rows], *_columns(cls, [record for _, record in rows]))


def _plain(value: Any) -> Any:
    return value.value if isinstance(value, WorkflowStatusString) else value


_CONFLICTS = {
    "workflow_status_pkey": "A workflow of the import was recorded meanwhile",
    "workflow_status_dedup_idx": (
        "A live workflow here holds the deduplication ID of an imported PENDING or ENQUEUED "
        "workflow on its queue (import with unfinished='cancel' to keep it from running)"
    ),
    "messages_idempotency_key_key": "A message here has the idempotency key of an imported one",
}


# -- to and from a file ----------------------------------------------------------------------


def to_document(
    histories: Iterable[WorkflowHistory], *, exported_at: int | None = None
) -> dict[str, Any]:
    """The history file holding these histories, as a JSON-ready dict."""
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "exported_at": now_ms() if exported_at is None else exported_at,
        "workflows": [
            {
                "workflow": _fields(h.workflow),
                "calls": [_fields(c) for c in h.calls],
                "events": [_fields(e) for e in h.events],
                "streams": [_fields(s) for s in h.streams],
                "messages": [_fields(m) for m in h.messages],
            }
            for h in histories
        ],
    }


def _fields(record: Any) -> dict[str, Any]:
    return {f.name: _plain(getattr(record, f.name)) for f in dataclasses.fields(record)}


def dump_document(document: Mapping[str, Any]) -> bytes:
    """A history file's bytes: indented UTF-8 JSON, one field per line, ending in a newline."""
    return orjson.dumps(document, option=orjson.OPT_INDENT_2) + b"\n"


def load_histories(
    source: Mapping[str, Any] | bytes | str | os.PathLike[str], *, name: str | None = None
) -> list[WorkflowHistory]:
    """The histories of a history file, checked field by field.

    ``source`` is a parsed document (a mapping), a file's bytes, or a file's
    path (a ``str`` is always a path; reading it blocks, so call this outside
    the event loop). ``name`` is how errors refer to it.

    Raises:
        ValueError: the file cannot be read, is not JSON, is not a history
            file, has another ``format_version``, or holds a field that is
            missing, unknown or of the wrong type; the message names the file
            and the field.
    """
    if isinstance(source, Mapping):
        label, data = name or "the history document", source
    else:
        if isinstance(source, bytes):
            label, raw = name or "the history file", source
        else:
            label = name or os.fspath(source)
            try:
                raw = Path(source).read_bytes()
            except OSError as exc:
                raise ValueError(f"{label}: cannot read it: {exc.strerror or exc}") from exc
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise ValueError(f"{label} is not a dbos-async history file: bad JSON: {exc}") from exc
    try:
        return _parse_document(data)
    except ValueError as exc:
        raise ValueError(f"{label}: {exc}") from None


def _parse_document(data: object) -> list[WorkflowHistory]:
    if not isinstance(data, Mapping) or data.get("format") != FORMAT:
        found = data.get("format") if isinstance(data, Mapping) else _kind(data)
        raise ValueError(f"not a dbos-async history file (format {found!r}, expected {FORMAT!r})")
    version = data.get("format_version")
    if type(version) is not int or version < 1:
        raise ValueError(f"format_version {version!r} is not a format version")
    if version > FORMAT_VERSION:
        raise ValueError(
            f"format_version {version} is newer than this dbos-async reads ({FORMAT_VERSION}):"
            " upgrade dbos-async to load it"
        )
    _check_keys(data, {"format", "format_version", "exported_at", "workflows"}, "the file")
    if "exported_at" in data:
        _value("int | None", data["exported_at"], "exported_at")
    workflows = data.get("workflows")
    if not isinstance(workflows, list):
        raise ValueError(f"workflows must be a list, got {_kind(workflows)}")
    histories = [_parse_history(entry, f"workflows[{n}]") for n, entry in enumerate(workflows)]
    _check_across(histories, "workflows")
    return histories


def _parse_history(entry: object, where: str) -> WorkflowHistory:
    if not isinstance(entry, Mapping):
        raise ValueError(f"{where} must be an object, got {_kind(entry)}")
    _check_keys(entry, {"workflow", "calls", "events", "streams", "messages"}, where)
    history = WorkflowHistory(
        _record(RecordedWorkflow, entry.get("workflow"), f"{where}.workflow"),
        _records(RecordedCall, entry.get("calls", []), f"{where}.calls"),
        _records(RecordedEvent, entry.get("events", []), f"{where}.events"),
        _records(RecordedStreamEntry, entry.get("streams", []), f"{where}.streams"),
        _records(RecordedMessage, entry.get("messages", []), f"{where}.messages"),
    )
    _check_history(history, where)
    return history


def _check_history(history: WorkflowHistory, where: str) -> None:
    """What the field types alone do not say: branch syntax, and no identity twice."""
    if not history.workflow_id:
        raise ValueError(f"{where}.workflow.workflow_id must not be empty")
    for n, call in enumerate(history.calls):
        if not _BRANCH.fullmatch(call.branch):
            raise ValueError(f"{where}.calls[{n}].branch {call.branch!r} is not a branch")
        if (call.origin is None) != (call.branch == ""):
            raise ValueError(
                f"{where}.calls[{n}].origin must be null for branch '' and a number for any other"
            )
    _check_unique(((c.branch, c.step_id) for c in history.calls), "(branch, step_id)", where)
    _check_unique((e.key for e in history.events), "event key", where)
    _check_unique(((s.key, s.offset) for s in history.streams), "stream (key, offset)", where)


def _check_across(histories: Sequence[WorkflowHistory], where: str) -> None:
    _check_unique((h.workflow_id for h in histories), "workflow ID", where)
    keys = (m.idempotency_key for h in histories for m in h.messages if m.idempotency_key)
    _check_unique(keys, "message idempotency key", where)


_BRANCH = re.compile(r"(?:\d+(?:\.\d+)*)?")
_Record = TypeVar(
    "_Record",
    RecordedWorkflow,
    RecordedCall,
    RecordedEvent,
    RecordedStreamEntry,
    RecordedMessage,
)
_INT4 = frozenset({"step_id", "origin", "attempts", "recovery_attempts", "priority", "offset"})
# Fields of the workflow's row a file must give, though the dataclass has defaults.
_REQUIRED = frozenset({"created_at", "updated_at", "branched_steps"})
_STATUSES = frozenset(s.value for s in WorkflowStatusString)


def _records(cls: type[_Record], items: object, where: str) -> tuple[_Record, ...]:
    if not isinstance(items, list):
        raise ValueError(f"{where} must be a list, got {_kind(items)}")
    return tuple(_record(cls, item, f"{where}[{n}]") for n, item in enumerate(items))


def _record(cls: type[_Record], data: object, where: str) -> _Record:
    if not isinstance(data, Mapping):
        raise ValueError(f"{where} must be an object, got {_kind(data)}")
    fields = dataclasses.fields(cls)
    _check_keys(data, {f.name for f in fields}, where)
    values: dict[str, Any] = {}
    for f in fields:
        if f.name in data:
            values[f.name] = _value(str(f.type), data[f.name], f"{where}.{f.name}", f.name)
        elif f.default is dataclasses.MISSING or (cls is RecordedWorkflow and f.name in _REQUIRED):
            raise ValueError(f"{where}.{f.name} is missing")
    return cls(**values)


def _value(kind: str, value: object, where: str, name: str = "") -> Any:
    if value is None and kind.endswith(" | None"):
        return None
    base = kind.removesuffix(" | None")
    if base == "str" and isinstance(value, str):
        if "\x00" in value:
            raise ValueError(f"{where} holds a NUL character, which Postgres text cannot")
        return value
    if base == "int" and type(value) is int:
        bits = 31 if name in _INT4 else 63
        if not -(2**bits) <= value < 2**bits:
            raise ValueError(f"{where} is out of range: {value}")
        return value
    if base == "bool" and isinstance(value, bool):
        return value
    if base == "WorkflowStatusString" and isinstance(value, str) and value in _STATUSES:
        return WorkflowStatusString(value)
    expected = {"str": "a string", "int": "an integer", "bool": "true or false"}.get(
        base, f"one of {', '.join(WorkflowStatusString)}"
    )
    nullable = " or null" if kind.endswith(" | None") else ""
    raise ValueError(f"{where} must be {expected}{nullable}, got {_kind(value)} {value!r:.40}")


def _check_keys(data: Mapping[str, Any], known: set[str], where: str) -> None:
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(
            f"{where} has unknown field {unknown[0]!r} (this dbos-async reads format_version "
            f"{FORMAT_VERSION})"
        )


def _check_unique(values: Iterable[object], what: str, where: str) -> None:
    seen: set[object] = set()
    for value in values:
        if value in seen:
            raise ValueError(f"{where} has {what} {value!r} twice")
        seen.add(value)


def _kind(value: object) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean"}
    if value is None:
        return "null"
    return names.get(type(value), "a number" if isinstance(value, int | float) else "a value")
