"""Observer hooks: which the runtime calls, in what order, with what; and that none can hurt."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import sys
import textwrap
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import asyncpg
import pytest

from dbos_async import (
    DBOS,
    MaxStepRetriesExceeded,
    Queue,
    SetWorkflowID,
    WorkflowCancelledError,
)
from dbos_async import observers as observers_module
from dbos_async import runtime as runtime_module
from dbos_async.observers import Observer, StepEvent, WaitEvent, WorkflowEvent
from dbos_async.queue import forget_queue

# -- a recording observer ---------------------------------------------------------------


@dataclass(frozen=True)
class Seen:
    """One hook call: its name and arguments."""

    hook: str
    args: tuple[Any, ...]

    @property
    def workflow_id(self) -> str | None:
        first = self.args[0] if self.args else None
        if isinstance(first, WorkflowEvent):
            return first.workflow_id
        if isinstance(first, StepEvent | WaitEvent):
            return first.workflow.workflow_id
        if self.hook in ("workflow_enqueued", "workflow_cancelled"):
            return str(first)
        return None


class Recorder(Observer):
    """Records every hook call; ``trace`` is the context it hands out when asked."""

    def __init__(self, trace: Mapping[str, str] | None = None) -> None:
        self.seen: list[Seen] = []
        self.trace = trace

    def _add(self, hook: str, *args: Any) -> None:
        self.seen.append(Seen(hook, args))

    def runtime_launched(self, runtime: Any) -> None:
        self._add("runtime_launched", runtime)

    def runtime_stopping(self, runtime: Any) -> None:
        self._add("runtime_stopping", runtime)

    def start_context(self) -> Mapping[str, str] | None:
        self._add("start_context")
        return self.trace

    def workflow_enqueued(
        self, workflow_id: str, name: str, queue_name: str
    ) -> Mapping[str, str] | None:
        self._add("workflow_enqueued", workflow_id, name, queue_name)
        return None if self.trace is None else {**self.trace, "enqueued": workflow_id}

    def workflow_started(self, workflow: WorkflowEvent) -> None:
        self._add("workflow_started", workflow)

    def workflow_dequeued(self, workflow: WorkflowEvent, waited_seconds: float) -> None:
        self._add("workflow_dequeued", workflow, waited_seconds)

    def workflow_recovered(self, workflow: WorkflowEvent) -> None:
        self._add("workflow_recovered", workflow)

    def workflow_finished(
        self,
        workflow: WorkflowEvent,
        status: str,
        error: BaseException | None,
        output: Any,
        replayed_steps: int,
    ) -> None:
        self._add("workflow_finished", workflow, status, error, output, replayed_steps)

    def workflow_cancelled(self, workflow_id: str) -> None:
        self._add("workflow_cancelled", workflow_id)

    def step_started(self, step: StepEvent, attempt: int) -> None:
        self._add("step_started", step, attempt)

    def step_retried(
        self, step: StepEvent, attempt: int, error: BaseException, delay_seconds: float
    ) -> None:
        self._add("step_retried", step, attempt, error, delay_seconds)

    def step_finished(
        self, step: StepEvent, status: str, error: BaseException | None, attempts: int, output: Any
    ) -> None:
        self._add("step_finished", step, status, error, attempts, output)

    def wait_started(self, wait: WaitEvent) -> None:
        self._add("wait_started", wait)

    def wait_finished(self, wait: WaitEvent, timed_out: bool) -> None:
        self._add("wait_finished", wait, timed_out)

    # -- reading it back ---------------------------------------------------------------

    def of(self, workflow_id: str) -> list[Seen]:
        """The calls about one workflow, in order."""
        return [s for s in self.seen if s.workflow_id == workflow_id]

    def hooks(self, workflow_id: str) -> list[str]:
        return [s.hook for s in self.of(workflow_id)]

    def one(self, workflow_id: str, hook: str) -> Seen:
        [found] = [s for s in self.of(workflow_id) if s.hook == hook]
        return found

    async def wait_for(self, workflow_id: str, hook: str) -> Seen:
        """The first ``hook`` call about the workflow, once it happens (10 s at most)."""
        async with asyncio.timeout(10):
            while True:
                for s in self.of(workflow_id):
                    if s.hook == hook:
                        return s
                await asyncio.sleep(0.01)


# -- the application --------------------------------------------------------------------

failures: dict[str, int] = {}  # failed attempts left, per key
raised: list[BaseException] = []  # what failing steps raised, in order


@DBOS.step()
async def double(x: int) -> int:
    return 2 * x


@DBOS.step(retries_allowed=True, max_attempts=3, interval_seconds=0.01, backoff_rate=2.0)
async def flaky(key: str) -> str:
    if failures.get(key, 0) > 0:
        failures[key] -= 1
        raise ConnectionError(f"{key}: {failures[key]} failures left")
    return key


@DBOS.step()
async def broken(why: str) -> None:
    error = LookupError(why)
    raised.append(error)
    raise error


@DBOS.transaction()
async def select_one() -> int:
    value: int = await DBOS.connection.fetchval("SELECT 1")
    return value


@DBOS.workflow()
async def tour(x: int) -> dict[str, Any]:
    """A step, a transaction, a sleep and a recv that times out."""
    doubled = await double(x)
    one = await select_one()
    await DBOS.sleep(0.01)
    message = await DBOS.recv("nothing", timeout_seconds=0.05)
    return {"doubled": doubled, "one": one, "message": message}


@DBOS.workflow()
async def receiver() -> Any:
    return await DBOS.recv("greeting", timeout_seconds=30)


@DBOS.workflow()
async def retried(key: str) -> str:
    return await flaky(key)


@DBOS.workflow()
async def failing(why: str) -> None:
    await broken(why)


@DBOS.workflow()
async def sleeper(seconds: float) -> str:
    await DBOS.sleep(seconds)
    return "awake"


@DBOS.workflow()
async def two_steps_then_sleep(x: int, seconds: float) -> int:
    a = await double(x)
    b = await double(a)
    await DBOS.sleep(seconds)
    return await double(b)


@DBOS.step()
async def slow_step(seconds: float) -> str:
    await asyncio.sleep(seconds)  # not durable: a body that takes long
    return "done"


@DBOS.workflow()
async def in_a_slow_step(seconds: float) -> str:
    return await slow_step(seconds)


@DBOS.workflow()
async def simple(x: int) -> int:
    return await double(x)


def name_of(fn: Callable[..., object]) -> str:
    name: str = fn.__dbos_entry__.name  # type: ignore[attr-defined]
    return name


@pytest.fixture
def queue() -> Iterator[Queue]:
    declared = Queue(f"obs-{uuid.uuid4().hex[:8]}")
    yield declared
    forget_queue(declared.name)


def runtime(db_url: str, *observers: Observer) -> DBOS:
    return DBOS(database_url=db_url, app_version="test", observers=observers)


# -- the hooks of one execution ---------------------------------------------------------


async def test_a_workflow_tells_each_step_transaction_and_wait_in_order(db_url: str) -> None:
    recorder = Recorder()
    async with runtime(db_url, recorder) as dbos:
        with SetWorkflowID("tour-1"):
            result = await tour(4)
        assert result == {"doubled": 8, "one": 1, "message": None}
        launched = dbos._runtime
    assert recorder.hooks("tour-1") == [
        "workflow_started",
        "step_started",  # double
        "step_finished",
        "step_started",  # select_one
        "step_finished",
        "wait_started",  # the sleep
        "wait_finished",
        "wait_started",  # the recv
        "wait_finished",
        "workflow_finished",
    ]
    calls = recorder.of("tour-1")
    [started] = [s.args[0] for s in calls if s.hook == "workflow_started"]
    assert started == WorkflowEvent(
        workflow_id="tour-1",
        name=name_of(tour),
        app_version="test",
        executor_id=dbos.executor_id,
        origin="start",
        queue_name=None,
        recovery_attempt=0,
        trace_context=None,
        args=(4,),
        kwargs={},
    )
    # Every later event names the same execution.
    assert all(s.args[0] is started or s.args[0].workflow is started for s in calls)
    step, step_end = calls[1], calls[2]
    assert step.args[0] == StepEvent(
        started, step.args[0].step_id, step.args[0].branch, name_of(double), "step"
    )
    assert step.args[1] == 1
    assert step_end.args[1:] == ("SUCCESS", None, 1, 8)
    txn, txn_end = calls[3], calls[4]
    assert (txn.args[0].name, txn.args[0].kind, txn.args[1]) == (
        name_of(select_one),
        "transaction",
        1,
    )
    assert txn_end.args[1:] == ("SUCCESS", None, 1, 1)
    assert txn.args[0].step_id > step.args[0].step_id
    sleep, sleep_end = calls[5].args[0], calls[6]
    assert (sleep.kind, sleep.topic) == ("sleep", None)
    assert time.time() - 10 < sleep.until < time.time()  # epoch seconds, in the past now
    assert sleep_end.args == (sleep, True)  # its time came
    recv, recv_end = calls[7].args[0], calls[8]
    assert (recv.kind, recv.topic) == ("recv", "nothing")
    assert recv.until > sleep.until and not math.isinf(recv.until)
    assert recv_end.args == (recv, True)  # timed out: no message came
    assert calls[9].args[1:] == ("SUCCESS", None, result, 0)
    # The runtime's own hooks, once each, around everything else.
    assert recorder.seen[0] == Seen("runtime_launched", (launched,))
    assert recorder.seen[-1] == Seen("runtime_stopping", (launched,))
    assert [s.hook for s in recorder.seen].count("start_context") == 1


async def test_a_recv_that_gets_its_message_did_not_time_out(db_url: str) -> None:
    recorder = Recorder()
    async with runtime(db_url, recorder) as dbos:
        handle = await dbos.start_workflow(receiver)
        await recorder.wait_for(handle.workflow_id, "wait_started")
        await dbos.send(handle.workflow_id, "hello", topic="greeting")
        assert await handle.get_result(timeout=10) == "hello"
    wait, timed_out = recorder.one(handle.workflow_id, "wait_finished").args
    assert (wait.kind, wait.topic, timed_out) == ("recv", "greeting", False)
    assert recorder.hooks(handle.workflow_id)[-1] == "workflow_finished"


async def test_a_retried_step_tells_each_attempt_and_each_retry(db_url: str) -> None:
    recorder = Recorder()
    failures["twice"] = 2
    async with runtime(db_url, recorder):
        with SetWorkflowID("retried-1"):
            assert await retried("twice") == "twice"
    calls = [s for s in recorder.of("retried-1") if s.hook.startswith("step_")]
    assert [(s.hook, s.args[1]) for s in calls] == [
        ("step_started", 1),
        ("step_retried", 1),
        ("step_started", 2),
        ("step_retried", 2),
        ("step_started", 3),
        ("step_finished", "SUCCESS"),
    ]
    step = calls[0].args[0]
    assert all(s.args[0] is step for s in calls)  # one step, one event
    first, second = calls[1].args, calls[3].args
    assert isinstance(first[2], ConnectionError) and "1 failures left" in str(first[2])
    assert isinstance(second[2], ConnectionError) and "0 failures left" in str(second[2])
    assert (first[3], second[3]) == pytest.approx((0.01, 0.02))  # interval, then backoff
    assert calls[-1].args[1:] == ("SUCCESS", None, 3, "twice")


async def test_an_error_ends_the_step_and_the_workflow_with_the_exception(db_url: str) -> None:
    recorder = Recorder()
    raised.clear()
    failures["always"] = 10
    async with runtime(db_url, recorder):
        with SetWorkflowID("failing-1"), pytest.raises(LookupError):
            await failing("no such order")
        with SetWorkflowID("exhausted-1"), pytest.raises(MaxStepRetriesExceeded):
            await retried("always")
    [error] = raised
    assert recorder.hooks("failing-1") == [
        "workflow_started",
        "step_started",
        "step_finished",
        "workflow_finished",
    ]
    assert recorder.one("failing-1", "step_finished").args[1:] == ("ERROR", error, 1, None)
    assert recorder.one("failing-1", "workflow_finished").args[1:] == ("ERROR", error, None, 0)
    # Retries exhausted: the step ends in ERROR after every attempt, and so does the workflow.
    step_end = recorder.one("exhausted-1", "step_finished").args
    assert step_end[1] == "ERROR" and isinstance(step_end[2], MaxStepRetriesExceeded)
    assert step_end[3] == 3
    end = recorder.one("exhausted-1", "workflow_finished").args
    assert end[1] == "ERROR" and end[2] is step_end[2]


# -- trace contexts ---------------------------------------------------------------------


async def test_the_trace_context_captured_at_a_start_or_an_enqueue_is_stored_and_handed_back(
    db_url: str, conn: asyncpg.Connection, queue: Queue
) -> None:
    recorder = Recorder(
        trace={"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}
    )
    async with runtime(db_url, recorder):
        with SetWorkflowID("started-1"):
            assert await simple(1) == 2
        with SetWorkflowID("enqueued-1"):
            handle = await queue.enqueue(simple, 2)
        assert await handle.get_result(timeout=10) == 4
    stored = {
        row["workflow_id"]: row["trace_context"]
        for row in await conn.fetch(
            "SELECT workflow_id, trace_context FROM workflow_status"
            " WHERE workflow_id IN ('started-1', 'enqueued-1')"
        )
    }
    # A start: the caller's context (start_context), as JSON in the row.
    assert json.loads(stored["started-1"]) == recorder.trace
    assert recorder.one("started-1", "workflow_started").args[0].trace_context == recorder.trace
    # An enqueue: what workflow_enqueued returned, as JSON in the row...
    assert recorder.one("enqueued-1", "workflow_enqueued").args == (
        "enqueued-1",
        name_of(simple),
        queue.name,
    )
    expected = {**(recorder.trace or {}), "enqueued": "enqueued-1"}
    assert json.loads(stored["enqueued-1"]) == expected
    # ... and the dequeued execution carries it, as it carries its queue.
    assert recorder.hooks("enqueued-1") == [
        "workflow_enqueued",
        "workflow_dequeued",
        "workflow_started",
        "step_started",
        "step_finished",
        "workflow_finished",
    ]
    dequeued, waited = recorder.one("enqueued-1", "workflow_dequeued").args
    assert dequeued is recorder.one("enqueued-1", "workflow_started").args[0]
    assert (dequeued.origin, dequeued.queue_name) == ("dequeue", queue.name)
    assert dequeued.trace_context == expected
    assert 0 <= waited < 10


async def test_no_trace_context_stores_null(db_url: str, conn: asyncpg.Connection) -> None:
    async with runtime(db_url, Recorder()):
        with SetWorkflowID("untraced"):
            await simple(1)
    stored = await conn.fetchval(
        "SELECT trace_context FROM workflow_status WHERE workflow_id = 'untraced'"
    )
    assert stored is None


# -- cancellation and recovery ----------------------------------------------------------


async def test_a_cancel_is_told_and_the_execution_ends_cancelled(db_url: str) -> None:
    recorder = Recorder()
    async with runtime(db_url, recorder) as dbos:
        handle = await dbos.start_workflow(sleeper, 60.0)
        await recorder.wait_for(handle.workflow_id, "wait_started")
        await dbos.cancel_workflow(handle.workflow_id)
        with pytest.raises(WorkflowCancelledError):
            await handle.get_result(timeout=10)
    workflow_id = handle.workflow_id
    assert recorder.hooks(workflow_id) == [
        "workflow_started",
        "wait_started",
        "workflow_cancelled",
        "wait_finished",
        "workflow_finished",
    ]
    assert recorder.one(workflow_id, "workflow_cancelled").args == (workflow_id,)
    wait, timed_out = recorder.one(workflow_id, "wait_finished").args
    assert wait.kind == "sleep" and timed_out is False  # interrupted, not woken
    _, status, error, output, replayed = recorder.one(workflow_id, "workflow_finished").args
    assert (status, output, replayed) == ("CANCELLED", None, 0)
    assert isinstance(error, WorkflowCancelledError)


async def test_a_step_cut_short_ends_cancelled_or_stopped(db_url: str) -> None:
    recorder = Recorder()
    async with runtime(db_url, recorder) as dbos:
        cancelled = await dbos.start_workflow(in_a_slow_step, 60.0)
        await recorder.wait_for(cancelled.workflow_id, "step_started")
        await dbos.cancel_workflow(cancelled.workflow_id)
        with pytest.raises(WorkflowCancelledError):
            await cancelled.get_result(timeout=10)
        stopped = await dbos.start_workflow(in_a_slow_step, 60.0)
        await recorder.wait_for(stopped.workflow_id, "step_started")
    told = ["workflow_started", "step_started", "step_finished", "workflow_finished"]
    assert recorder.hooks(stopped.workflow_id) == told
    assert recorder.hooks(cancelled.workflow_id) == [*told[:2], "workflow_cancelled", *told[2:]]
    for handle, status in ((cancelled, "CANCELLED"), (stopped, "STOPPED")):
        _, step_status, error, _, output = recorder.one(handle.workflow_id, "step_finished").args
        assert (step_status, error, output) == (status, None, None)
        assert recorder.one(handle.workflow_id, "workflow_finished").args[1] == status


async def test_a_recovered_execution_counts_the_steps_it_replayed(db_url: str) -> None:
    first, second = Recorder(), Recorder()
    async with runtime(db_url, first) as dbos:
        handle = await dbos.start_workflow(two_steps_then_sleep, 1, 0.5)
        await first.wait_for(handle.workflow_id, "wait_started")
    # A clean shutdown leaves it PENDING: this execution had no outcome.
    workflow_id = handle.workflow_id
    assert first.hooks(workflow_id) == [
        "workflow_started",
        "step_started",
        "step_finished",
        "step_started",
        "step_finished",
        "wait_started",
        "wait_finished",
        "workflow_finished",
    ]
    assert first.one(workflow_id, "wait_finished").args[1] is False
    assert first.one(workflow_id, "workflow_finished").args[1:] == ("STOPPED", None, None, 0)
    # The same executor ID, launched again, recovers it: two steps and the sleep replay.
    async with runtime(db_url, second) as dbos:
        recovered = await dbos.retrieve_workflow(workflow_id)
        assert await recovered.get_result(timeout=10) == 8
    assert second.hooks(workflow_id) == [
        "workflow_recovered",
        "workflow_started",
        "wait_started",  # the rest of the recorded sleep
        "wait_finished",
        "step_started",  # the third step, never run before
        "step_finished",
        "workflow_finished",
    ]
    event = second.one(workflow_id, "workflow_recovered").args[0]
    assert event is second.one(workflow_id, "workflow_started").args[0]
    assert (event.origin, event.recovery_attempt, event.args) == ("recovery", 1, (1, 0.5))
    assert second.one(workflow_id, "workflow_finished").args[1:] == ("SUCCESS", None, 8, 3)
    # The sleep wakes at the time the first execution recorded.
    assert second.one(workflow_id, "wait_started").args[0].until == pytest.approx(
        first.one(workflow_id, "wait_started").args[0].until
    )


# -- observers cannot hurt --------------------------------------------------------------


class Exploding(Observer):
    """An observer whose every hook raises."""

    def __getattribute__(self, name: str) -> Any:
        if name.startswith("_"):
            return super().__getattribute__(name)

        def explode(*args: Any) -> Any:
            raise RuntimeError(f"observer bug in {name}")

        return explode


async def test_an_observer_that_raises_everywhere_is_logged_and_changes_nothing(
    db_url: str, conn: asyncpg.Connection, queue: Queue, caplog: pytest.LogCaptureFixture
) -> None:
    recorder = Recorder()  # after the broken one: still told everything
    caplog.set_level(logging.ERROR, logger="dbos_async.observers")
    failures["once"] = 1
    async with runtime(db_url, Exploding(), recorder) as dbos:
        with SetWorkflowID("hurt-1"):
            assert await tour(3) == {"doubled": 6, "one": 1, "message": None}
        with SetWorkflowID("hurt-2"):
            assert await retried("once") == "once"
        with SetWorkflowID("hurt-3"):
            handle = await queue.enqueue(simple, 5)
        assert await handle.get_result(timeout=10) == 10
        sleeping = await dbos.start_workflow(sleeper, 60.0)
        await recorder.wait_for(sleeping.workflow_id, "wait_started")
        await dbos.cancel_workflow(sleeping.workflow_id)
        with pytest.raises(WorkflowCancelledError):
            await sleeping.get_result(timeout=10)
    logged = [r for r in caplog.records if r.name == "dbos_async.observers"]
    failed_hooks = {r.args[1] for r in logged if "failed in" in r.msg}  # type: ignore[index]
    assert failed_hooks >= {
        "runtime_launched",
        "runtime_stopping",
        "workflow_started",
        "workflow_dequeued",
        "workflow_finished",
        "workflow_cancelled",
        "step_started",
        "step_retried",
        "step_finished",
        "wait_started",
        "wait_finished",
    }, failed_hooks
    assert all(r.exc_info and isinstance(r.exc_info[1], RuntimeError) for r in logged)
    # start_context and workflow_enqueued failed too: logged, and no context was stored.
    capturing = [r for r in logged if "capturing a trace context" in r.getMessage()]
    assert len(capturing) >= 2
    stored = await conn.fetch("SELECT trace_context FROM workflow_status")
    assert len(stored) == 4 and all(row["trace_context"] is None for row in stored)
    # The well-behaved observer after it saw everything.
    assert recorder.hooks("hurt-1")[-1] == "workflow_finished"
    assert recorder.one("hurt-3", "workflow_finished").args[1] == "SUCCESS"


async def test_without_observers_no_hook_is_called_and_no_event_built(
    db_url: str, queue: Queue, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []

    def spy(what: str) -> Callable[..., Any]:
        def record(*args: Any, **kwargs: Any) -> Any:
            calls.append(what)
            raise AssertionError(f"{what} called with no observer")

        return record

    for name in ("notify", "collect_context", "WorkflowEvent", "StepEvent", "WaitEvent"):
        monkeypatch.setattr(observers_module, name, spy(name))
    monkeypatch.setattr(runtime_module, "notify", spy("runtime.notify"))
    async with DBOS(database_url=db_url, app_version="test") as dbos:
        assert dbos._runtime.observers == ()
        assert await tour(2) == {"doubled": 4, "one": 1, "message": None}
        failures["once"] = 1
        assert await retried("once") == "once"
        with pytest.raises(LookupError):
            await failing("nothing to see")
        handle = await queue.enqueue(simple, 3)
        assert await handle.get_result(timeout=10) == 6
        sleeping = await dbos.start_workflow(sleeper, 60.0)
        receiving = await dbos.start_workflow(receiver)
        await dbos.send(receiving.workflow_id, "hi", topic="greeting")
        assert await receiving.get_result(timeout=10) == "hi"
        await dbos.cancel_workflow(sleeping.workflow_id)
        with pytest.raises(WorkflowCancelledError):
            await sleeping.get_result(timeout=10)
    assert calls == []


# -- the optional dependencies stay optional --------------------------------------------

_WITHOUT_EXTRAS = """
import sys

BLOCKED = ("opentelemetry", "prometheus_client")
tried = []


class Blocker:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            tried.append(name)
            raise ImportError(f"{name} is blocked in this test")
        return None


sys.meta_path.insert(0, Blocker())
for name in BLOCKED:
    try:
        __import__(name)
    except ImportError:
        pass
    else:
        raise SystemExit(f"the blocker let {name} be imported")
probes = list(tried)

import asyncio

import dbos_async
from dbos_async import DBOS


@DBOS.step()
async def add_one(x):
    return x + 1


@DBOS.workflow()
async def add_two(x):
    return await add_one(await add_one(x))


async def main():
    async with DBOS(database_url=sys.argv[1], app_version="no-extras") as dbos:
        assert await add_two(1) == 3
        assert dbos._runtime.observers == ()


asyncio.run(main())
assert tried == probes, f"dbos_async tried to import {tried[len(probes):]}"
loaded = [m for m in sys.modules if m.split(".")[0] in BLOCKED]
assert not loaded, loaded
print("ran without", ", ".join(probes))
"""


async def test_the_runtime_runs_without_opentelemetry_or_prometheus_client(db_url: str) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        textwrap.dedent(_WITHOUT_EXTRAS),
        db_url,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    assert out.decode().strip() == "ran without opentelemetry, prometheus_client", out
