"""The replay checker: does the current code still replay recorded histories?

``check_histories`` re-runs each history's workflow function against the code
registered in this process, with every durable call served from the record:
no step body runs, no sleep is waited out, and nothing is written (the
workflow gets a stand-in runtime that refuses anything else). For each
workflow it reports whether the code is compatible, or where it diverges:

* "compatible": every branch made its recorded calls, in their positions, up
  to its return, a recorded error, or the history's end (the first call with
  no record, where a real replay goes on live);
* "diverges at <position>: recorded X, code calls Y": the first call whose
  position holds another function's record (``NonDeterministicWorkflowError``,
  noted even when the workflow's code catches it); also recorded calls the
  code never makes, a call past the end of a finished execution, inputs that
  no longer decode, or an error the record does not explain;
* "not checked: ...": the replay could not finish (a wait on something that
  is not a recorded call, a child whose history is not among those checked),
  so recorded calls were never compared: never compatible;
* output drift: a recorded step output that no longer validates as the step's
  current return annotation where a real replay would refuse it with
  ``SerializationError`` (an annotation naming a class): incompatible.

Histories come from a database (``read_histories``, ``check_workflows``) or
from a file written by ``dbos-async workflow export`` (``load_histories``):
a team can keep histories in its test suite and check every change in CI.
``dbos-async workflow check --app MODULE:OBJ`` runs it from the command line.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from dbos_async import branches, registry, serialization
from dbos_async.branches import Branch, current_branch
from dbos_async.checkpoint import SLEEP_STEP, HistoryEnd, position
from dbos_async.clock import REAL
from dbos_async.context import Check, Running, WorkflowContext, current_workflow
from dbos_async.errors import NonDeterministicWorkflowError, SerializationError
from dbos_async.history import RecordedCall, WorkflowHistory, read_histories
from dbos_async.management import list_workflows
from dbos_async.messaging import GET_EVENT_STEP, RECV_STEP
from dbos_async.models import WorkflowStatusString
from dbos_async.patching import PATCH_PREFIX
from dbos_async.systemdb.pool import Pool
from dbos_async.systemdb.steps import StepRecord
from dbos_async.workflow import Outcome

CHECK_TIMEOUT_SECONDS = 10.0
"""Longest one history's replay may take: it reads nothing, so a replay that waits is stuck."""


@dataclass(frozen=True, slots=True)
class CheckResult:
    """What checking one recorded history against the current code found.

    ``replayed`` counts the recorded calls the code made again; ``stopped``
    says where and why the replay stopped short of the function's end (None:
    it returned or raised). ``problem`` names the first incompatibility (None:
    compatible); ``drift`` lists recorded outputs that no longer validate.
    """

    workflow_id: str
    name: str
    status: str
    compatible: bool
    replayed: int
    problem: str | None = None
    stopped: str | None = None
    drift: tuple[str, ...] = field(default_factory=tuple)

    def summary(self) -> str:
        """One line for people."""
        verdict = "compatible" if self.compatible else self.problem or "incompatible"
        extra = f"; {len(self.drift)} recorded outputs drifted" if self.drift else ""
        return f"{self.workflow_id} ({self.name}, {self.status}): {verdict}{extra}"


class ReplayUnserved(BaseException):
    """The replayed code asked the runtime for something the record cannot serve."""


class _ReplayRuntime:
    """What a replayed workflow sees as its runtime: recorded child outcomes, and nothing else.

    Any other use (a read, a write, a wait on another workflow) stops the
    replay with ``ReplayUnserved``: a check must have no effects.
    """

    def __init__(self, config: Any, children: dict[str, Running]) -> None:
        self.config = config
        self.local = children  # what handle.get_result looks up first
        self.clock = REAL  # what checkpoints stamp records with (never written)
        self.bodies_running = 0
        self.step_overrides: dict[str, Any] = {}

    def __getattr__(self, name: str) -> Any:
        raise ReplayUnserved(f"it needs the runtime's {name!r}, which a check does not serve")


@dataclass(frozen=True, slots=True)
class _PermissiveConfig:
    enable_patching: bool = True


async def check_histories(
    histories: Sequence[WorkflowHistory], *, config: Any = None
) -> list[CheckResult]:
    """Check each history against the code registered in this process.

    ``config``: the checked app's runtime configuration (its
    ``enable_patching`` decides whether ``DBOS.patch`` is allowed); by
    default patches are allowed. The histories' own finished children serve
    ``get_result`` of a child workflow.
    """
    children = _child_outcomes(histories)
    settings = config if config is not None else _PermissiveConfig()
    return [await _check(history, settings, children) for history in histories]


async def check_workflows(
    pool: Pool,
    *,
    status: Sequence[str] | None = None,
    app_version: Sequence[str] | None = None,
    workflow_ids: Sequence[str] | None = None,
    config: Any = None,
    limit: int | None = None,
) -> list[CheckResult]:
    """Check the workflows of a database (by default its PENDING and ENQUEUED ones).

    Reads their histories, with their children's, and checks them; writes nothing.
    """
    chosen = list(status) if status else ["PENDING", "ENQUEUED"]
    statuses = await list_workflows(
        pool,
        workflow_ids=list(workflow_ids) if workflow_ids else None,
        status=chosen,
        app_version=list(app_version) if app_version else None,
        limit=limit,
        load_input=False,
        load_output=False,
    )
    ids = [s.workflow_id for s in statuses]
    if not ids:
        return []
    histories = await read_histories(pool, ids, with_children=True)
    children = _child_outcomes(histories)
    settings = config if config is not None else _PermissiveConfig()
    wanted = set(ids)
    return [await _check(h, settings, children) for h in histories if h.workflow_id in wanted]


def _child_outcomes(histories: Sequence[WorkflowHistory]) -> dict[str, Running]:
    """Finished workflows among the histories, as handles' in-process outcomes."""
    loop = asyncio.get_running_loop()
    found: dict[str, Running] = {}
    for h in histories:
        w = h.workflow
        if w.status not in (WorkflowStatusString.SUCCESS, WorkflowStatusString.ERROR):
            continue
        entry = registry.lookup(w.name)
        annotation = serialization.return_annotation(entry.fn) if entry else Any
        try:
            if w.status is WorkflowStatusString.SUCCESS:
                outcome = Outcome(value=serialization.decode(w.output, annotation))
            else:
                error = serialization.decode_exception(w.error) if w.error else None
                outcome = Outcome(error=error)
        except SerializationError as exc:
            outcome = Outcome(error=exc)
        future: asyncio.Future[Outcome] = loop.create_future()
        future.set_result(outcome)
        found[w.workflow_id] = Running(w.name, future)
    return found


async def _check(
    history: WorkflowHistory, config: Any, children: dict[str, Running]
) -> CheckResult:
    w = history.workflow
    result = functools.partial(CheckResult, w.workflow_id, w.name, w.status.value)
    entry = registry.lookup(w.name)
    if entry is None or entry.kind != "workflow":
        missing = f"the workflow function {w.name!r} is not registered in the checked code"
        return result(compatible=False, replayed=0, problem=missing)
    drift = tuple(_drift(history.calls))
    try:
        args, kwargs = serialization.decode_inputs(w.inputs or '{"args":[],"kwargs":{}}', entry.fn)
    except Exception as exc:
        undecodable = f"its recorded inputs no longer decode: {exc}"
        return result(compatible=False, replayed=0, problem=undecodable, drift=drift)
    recorded = {(c.branch, c.step_id): _record(w.workflow_id, c) for c in history.calls}
    ctx = WorkflowContext(
        _ReplayRuntime(config, children),  # type: ignore[arg-type]
        w.workflow_id,
        w.name,
        dict(recorded),
        w.branched_steps,
    )
    check = ctx.checking = Check()
    ended = await _replay(ctx, entry.fn, args, kwargs)
    # Counted before judging: an unfinished recv's deadline, set aside there, was not replayed.
    replayed = len(recorded) - len(ctx.recorded)
    problem, stopped = _judge(w.status, ctx, check, ended)
    if problem is None and drift:
        problem = f"recorded outputs no longer validate (first: {drift[0]})"
    return result(
        compatible=problem is None,
        replayed=replayed,
        problem=problem,
        stopped=stopped,
        drift=drift,
    )


_FINISHED = (WorkflowStatusString.SUCCESS, WorkflowStatusString.ERROR)


async def _replay(
    ctx: WorkflowContext, fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> BaseException | None:
    """Run the workflow function on its record; returns what it raised, if anything."""

    async def run() -> None:
        current_workflow.set(ctx)
        current_branch.set(Branch(ctx))
        await fn(*args, **kwargs)

    loop = asyncio.get_running_loop()
    # The tasks workflow code creates get branches, as under a runtime (spawn).
    branches.install(loop)
    task = loop.create_task(run())
    try:
        await asyncio.wait_for(asyncio.shield(task), CHECK_TIMEOUT_SECONDS)
    except TimeoutError as exc:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return exc
    except BaseException as exc:  # what the workflow function ended with
        return exc
    finally:
        # Tasks it left running (gather's siblings of a failed branch) have
        # had their turns: what they found is noted in ``ctx.checking``.
        ctx.finished = True
    return None


def _judge(
    status: WorkflowStatusString, ctx: WorkflowContext, check: Check, raised: BaseException | None
) -> tuple[str | None, str | None]:
    """The problem a replay shows (None: compatible), and where it stopped short.

    Compatible only when every branch replayed its records: the code returned,
    or raised what the record says, or reached the end of the history, where a
    real replay goes on live. Anything that left records unreached (a branch
    cancelled when another ended, a wait on something that is not a recorded
    call, a call the check cannot serve) is "not checked", never compatible.
    """
    if check.divergence is not None:  # whatever the code did with it
        return _diverged(check.divergence), None
    end = check.end if isinstance(check.end, HistoryEnd) else None
    unserved = _find(raised, (ReplayUnserved,)) if raised is not None else None
    if isinstance(raised, TimeoutError) and end is None:
        waits = "the code waits on something that is not a recorded call"
        return f"not checked: stopped after {CHECK_TIMEOUT_SECONDS:g} s ({waits})", None
    if unserved is not None:
        return f"not checked past the calls replayed so far: {unserved}", None
    if end is not None:
        stopped = f"the history ends at {end.where}"
        beyond = _beyond(end)
        if beyond is not None:
            return beyond, stopped
        # An unfinished recv's recorded deadline (see _beyond) was reached, in effect.
        ctx.recorded.pop((end.call.branch, end.call.step_id + 1), None)
        if status in _FINISHED and not end.call.name.startswith(PATCH_PREFIX):
            # A finished execution made every call it was going to: one more is new
            # code (a patch there is how new code is meant to go, and passes).
            return (
                f"diverges at {end.where}: code calls {end.call.name}, where the finished "
                "execution made no call"
            ), stopped
        if ctx.recorded:  # another branch's records, not reached once this one ended
            branch, step_id = min(ctx.recorded)
            return (
                f"not checked: the replay stopped at the history's end ({end.where}) before "
                f"the recorded calls from {position(branch, step_id)} on"
            ), stopped
        return None, stopped
    if raised is not None and not _recorded_outcome(raised):
        return f"the code raises {raised!r} replaying the history", None
    if ctx.recorded:
        # It returned (or raised its recorded error) with recorded calls left.
        branch, step_id = min(ctx.recorded)
        left = ctx.recorded[(branch, step_id)]
        return (
            f"diverges at {position(branch, step_id)}: recorded {left.function_name}, "
            "code makes no call there"
        ), None
    return None, None


def _diverged(found: BaseException) -> str:
    assert isinstance(found, NonDeterministicWorkflowError)
    if found.recorded_name == found.called_name:  # a construct, not a call
        return str(found)
    where = position(found.branch, found.step_id)
    return f"diverges at {where}: recorded {found.recorded_name}, code calls {found.called_name}"


def _recorded_outcome(raised: BaseException) -> bool:
    """Whether an exception the code raised is a recorded outcome (a step's error re-raised)."""
    found = raised
    while found is not None:
        if serialization.is_recorded(found):
            return True
        found = found.__cause__ or found.__context__  # type: ignore[assignment]
    return False


def _beyond(end: HistoryEnd) -> str | None:
    """A divergence hidden past the history's end: later calls of its branch are recorded.

    The original execution made a call at the end's position that did not
    finish (a crash took it) and went on to make later ones, which recorded;
    the code must make the same call there, which the record cannot show.
    The one known case is an unfinished recv or get_event, whose deadline is
    recorded next: anything else is reported. (Calls made together, as in
    ``gather(step_a(), step_b())``, where only the later one finished, are
    reported too: a known false alarm.)
    """
    call = end.call
    later = sorted(
        (step_id, record)
        for (branch, step_id), record in call.ctx.recorded.items()
        if branch == call.branch and step_id > call.step_id
    )
    if not later:
        return None
    step_id, record = later[0]
    waiting = call.name in (RECV_STEP, GET_EVENT_STEP) and step_id == call.step_id + 1
    if waiting and record.function_name == SLEEP_STEP:
        return None
    return (
        f"diverges at {position(call.branch, call.step_id)}: code calls {call.name}, where the "
        f"history has an unfinished call and goes on (recorded {record.function_name} at "
        f"{position(call.branch, step_id)})"
    )


def _find(exc: BaseException, kinds: tuple[type[BaseException], ...]) -> BaseException | None:
    if isinstance(exc, kinds):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = _find(inner, kinds)
            if found is not None:
                return found
    cause = exc.__cause__ or exc.__context__
    return _find(cause, kinds) if cause is not None and cause is not exc else None


def _record(workflow_id: str, call: RecordedCall) -> StepRecord:
    return StepRecord(
        workflow_id,
        call.step_id,
        call.function_name,
        call.output,
        call.error,
        call.child_workflow_id,
        call.started_at,
        call.completed_at,
        0,
        call.branch,
        call.origin or 0,
    )


def _drift(calls: Sequence[RecordedCall]) -> list[str]:
    """Recorded step outputs that no longer validate as their step's return annotation."""
    found = []
    for c in calls:
        entry = registry.lookup(c.function_name)
        if entry is None or entry.kind == "workflow" or c.output is None:
            continue
        annotation = serialization.return_annotation(entry.fn)
        try:
            serialization.decode(c.output, annotation, strict=True)
        except SerializationError as exc:
            found.append(f"{position(c.branch, c.step_id)} ({c.function_name}): {exc}")
    return found
