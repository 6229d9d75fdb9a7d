"""OpenTelemetry traces (dbos_async.contrib.otel): spans, their parents, and one trace per call.

Each test gives its runtime its own ``TracerProvider`` whose spans an
``InMemorySpanExporter`` keeps (the global provider is never set). A test
observer turns the runtime's hooks into asyncio events, so a test waits for
a span to end on the event that ends it, never on a sleep. The crash test
runs otel_app.py in subprocesses, SIGKILLs the first and reads the spans
each wrote to a file.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import secrets
import signal
import sys
from collections import defaultdict
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from dbos_async import DBOS, Queue, SetEnqueueOptions, SetWorkflowID, WorkflowCancelledError
from dbos_async.contrib.otel import PAYLOAD_CHARS, OpenTelemetry
from dbos_async.observers import Observer, WaitEvent, WorkflowEvent

APP = Path(__file__).with_name("otel_app.py")
QUEUE = Queue("otel_queue")


# -- helpers ------------------------------------------------------------------------------


class Tracing:
    """A tracer provider whose finished spans stay in memory."""

    def __init__(self) -> None:
        self.exporter = InMemorySpanExporter()
        # An explicit resource: the default one runs detectors in threads it joins,
        # which would block the event loop when a test makes a provider.
        self.provider = TracerProvider(resource=Resource({"service.name": "test"}))
        self.provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.tracer = self.provider.get_tracer("test")

    def spans(self) -> list[ReadableSpan]:
        return list(self.exporter.get_finished_spans())

    def named(self, name: str) -> list[ReadableSpan]:
        return [s for s in self.spans() if s.name == name]

    def one(self, name: str) -> ReadableSpan:
        found = self.named(name)
        assert len(found) == 1, f"{name!r}: {[s.name for s in self.spans()]}"
        return found[0]


class Signals(Observer):
    """The runtime's hooks as events; listed after OpenTelemetry, so its spans end first."""

    def __init__(self) -> None:
        self.finished: defaultdict[str, asyncio.Event] = defaultdict(asyncio.Event)
        self.waiting: defaultdict[str, asyncio.Event] = defaultdict(asyncio.Event)

    def workflow_finished(
        self,
        workflow: WorkflowEvent,
        status: str,
        error: BaseException | None,
        output: Any,
        replayed_steps: int,
    ) -> None:
        self.finished[workflow.workflow_id].set()

    def wait_started(self, wait: WaitEvent) -> None:
        self.waiting[wait.workflow.workflow_id].set()

    async def ended(self, workflow_id: str) -> None:
        with anyio.fail_after(10):
            await self.finished[workflow_id].wait()


@pytest.fixture(autouse=True)
def no_context_leaks(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """A context token detached in the wrong task, or an observer that raised, is logged: fail."""
    with caplog.at_level(logging.WARNING):
        yield
    bad = [
        r.getMessage()
        for r in caplog.records
        if r.name == "opentelemetry.context" or "observer" in r.getMessage()
    ]
    assert not bad


@pytest.fixture
def tracing() -> Iterator[Tracing]:
    found = Tracing()
    yield found
    found.provider.shutdown()


@pytest.fixture
def signals() -> Signals:
    return Signals()


@pytest.fixture
async def dbos(db_url: str, tracing: Tracing, signals: Signals) -> AsyncIterator[DBOS]:
    async with DBOS(
        database_url=db_url,
        app_version="test",
        observers=[OpenTelemetry(tracing.provider), signals],
    ) as runtime:
        yield runtime


def parent_of(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


def ids(span: ReadableSpan) -> tuple[int, int]:
    return span.context.trace_id, span.context.span_id


def attrs(span: ReadableSpan) -> dict[str, Any]:
    return dict(span.attributes or {})


def events(span: ReadableSpan, name: str) -> list[dict[str, Any]]:
    return [dict(e.attributes or {}) for e in span.events if e.name == name]


# -- the application ----------------------------------------------------------------------

_user_tracer: list[trace.Tracer] = []
_flaky_calls: list[int] = []


@DBOS.step(name="otel.fetch")
async def fetch(x: int) -> int:
    with _user_tracer[0].start_as_current_span("user.async"):
        return x + 1


@DBOS.step(name="otel.compute")
def compute(x: int) -> int:  # a sync body, run in a worker thread
    with _user_tracer[0].start_as_current_span("user.sync"):
        return x * 2


@DBOS.workflow(name="otel.two_steps")
async def two_steps(x: int) -> int:
    return await compute(await fetch(x))


@DBOS.step(name="otel.flaky", retries_allowed=True, max_attempts=3, interval_seconds=0)
async def flaky() -> str:
    _flaky_calls.append(1)
    if len(_flaky_calls) == 1:
        raise RuntimeError("first attempt fails")
    return "ok"


@DBOS.workflow(name="otel.retrying")
async def retrying() -> str:
    return await flaky()


@DBOS.step(name="otel.broken")
async def broken() -> None:
    raise ValueError("broken step")


@DBOS.workflow(name="otel.failing")
async def failing() -> None:
    await broken()


@DBOS.workflow(name="otel.sleeper")
async def sleeper() -> None:
    await DBOS.sleep(3600)


@DBOS.workflow(name="otel.child")
async def child(x: int) -> int:
    return await fetch(x)


@DBOS.workflow(name="otel.parent")
async def parent(x: int) -> int:
    with SetWorkflowID("otel-child"):
        handle = await DBOS.start_workflow(child, x)
    return await handle.get_result()


@DBOS.workflow(name="otel.queued")
async def queued(x: int) -> int:
    return await fetch(x)


@DBOS.workflow(name="otel.echo")
async def echo(text: str, *, tag: str) -> str:
    return await shout(text) + tag


@DBOS.step(name="otel.shout")
async def shout(text: str) -> str:
    return text.upper()


@DBOS.transaction(name="otel.insert")
async def insert(x: int) -> int:
    with _user_tracer[0].start_as_current_span("user.sql"):
        return int(await DBOS.connection.fetchval("SELECT $1::int + 1", x))


@DBOS.transaction(name="otel.bad_sql")
async def bad_sql() -> None:
    await DBOS.connection.execute("SELECT * FROM no_such_table")


@DBOS.workflow(name="otel.transactions")
async def transactions(x: int) -> int:
    value = await insert(x)
    try:
        await bad_sql()
    except Exception:
        pass
    return value


@DBOS.workflow(name="otel.listener")
async def listener() -> list[Any]:
    got = await DBOS.recv("greeting", timeout_seconds=30)
    missed = await DBOS.recv("nothing", timeout_seconds=0.05)
    return [got, missed]


@DBOS.workflow(name="otel.resumable")
async def resumable() -> str:
    first = await shout("a")
    return first + str(await DBOS.recv("go", timeout_seconds=math.inf))


_in_step: dict[str, asyncio.Event] = {}


@DBOS.step(name="otel.blocking")
async def blocking() -> None:
    _in_step["entered"].set()
    await asyncio.Event().wait()  # until the workflow is cancelled or the runtime stops


@DBOS.workflow(name="otel.stuck")
async def stuck() -> None:
    await blocking()


# -- spans of one execution --------------------------------------------------------------


async def test_workflow_and_steps_join_the_callers_trace(
    dbos: DBOS, tracing: Tracing, signals: Signals
) -> None:
    _user_tracer[:] = [tracing.tracer]
    with tracing.tracer.start_as_current_span("caller") as caller:
        with SetWorkflowID("otel-ok"):
            handle = await dbos.start_workflow(two_steps, 3)
    assert await handle.get_result() == 8
    await signals.ended("otel-ok")

    workflow = tracing.one("workflow otel.two_steps")
    step_fetch = tracing.one("step otel.fetch")
    step_compute = tracing.one("step otel.compute")
    user_async, user_sync = tracing.one("user.async"), tracing.one("user.sync")
    trace_id = caller.get_span_context().trace_id
    assert {s.context.trace_id for s in tracing.spans()} == {trace_id}
    assert parent_of(workflow) == caller.get_span_context().span_id
    assert parent_of(step_fetch) == parent_of(step_compute) == workflow.context.span_id
    assert parent_of(user_async) == step_fetch.context.span_id
    assert parent_of(user_sync) == step_compute.context.span_id
    assert workflow.kind == step_fetch.kind == SpanKind.INTERNAL
    assert workflow.status.status_code == StatusCode.UNSET
    assert step_fetch.status.status_code == StatusCode.UNSET

    assert attrs(workflow) == {
        "dbos.workflow.id": "otel-ok",
        "dbos.workflow.name": "otel.two_steps",
        "dbos.app.version": "test",
        "dbos.executor.id": dbos.executor_id,
        "dbos.workflow.origin": "start",
        "dbos.recovery.attempt": 0,
        "dbos.workflow.status": "SUCCESS",
        "dbos.replayed_steps": 0,
    }
    for span, step_id in ((step_fetch, 0), (step_compute, 1)):
        found = attrs(span)
        assert found["dbos.workflow.id"] == "otel-ok"
        assert found["dbos.workflow.name"] == "otel.two_steps"
        assert found["dbos.step.attempt"] == 1
        assert found["dbos.step.attempts"] == 1
        assert found["dbos.app.version"] == "test"
        assert found["dbos.executor.id"] == dbos.executor_id
        assert found["dbos.step.id"] == step_id
        assert "dbos.step.output" not in found
    # Each span nests in time inside its parent.
    assert caller.start_time is not None and workflow.start_time is not None
    assert caller.start_time <= workflow.start_time
    assert workflow.end_time is not None and step_compute.end_time is not None
    assert workflow.start_time <= step_fetch.start_time  # type: ignore[operator]
    assert step_compute.end_time <= workflow.end_time


async def test_no_caller_span_starts_a_trace_of_its_own(
    dbos: DBOS, tracing: Tracing, signals: Signals
) -> None:
    _user_tracer[:] = [tracing.tracer]
    with SetWorkflowID("otel-root"):
        assert await (await dbos.start_workflow(two_steps, 1)).get_result() == 4
    await signals.ended("otel-root")
    workflow = tracing.one("workflow otel.two_steps")
    assert workflow.parent is None
    assert {s.context.trace_id for s in tracing.spans()} == {workflow.context.trace_id}


async def test_a_retried_step_is_one_span_with_a_retry_event(
    dbos: DBOS, tracing: Tracing, signals: Signals
) -> None:
    _flaky_calls.clear()
    with SetWorkflowID("otel-retry"):
        assert await (await dbos.start_workflow(retrying)).get_result() == "ok"
    await signals.ended("otel-retry")

    step = tracing.one("step otel.flaky")
    workflow = tracing.one("workflow otel.retrying")
    assert parent_of(step) == workflow.context.span_id
    assert step.status.status_code == StatusCode.UNSET
    assert workflow.status.status_code == StatusCode.UNSET
    (retry,) = events(step, "retry")
    assert retry["dbos.step.attempt"] == 1
    assert retry["exception.type"] == "RuntimeError"
    assert retry["exception.message"] == "first attempt fails"
    assert retry["dbos.retry.delay_seconds"] == 0
    assert [e["dbos.step.attempt"] for e in events(step, "attempt")] == [2]
    assert attrs(step)["dbos.step.attempt"] == 2
    assert attrs(step)["dbos.step.attempts"] == 2
    assert events(step, "exception") == []  # it succeeded in the end
    assert len(_flaky_calls) == 2


async def test_a_failure_is_an_error_on_the_step_and_the_workflow(
    dbos: DBOS, tracing: Tracing, signals: Signals
) -> None:
    with SetWorkflowID("otel-fail"):
        handle = await dbos.start_workflow(failing)
    with pytest.raises(ValueError, match="broken step"):
        await handle.get_result()
    await signals.ended("otel-fail")

    step = tracing.one("step otel.broken")
    workflow = tracing.one("workflow otel.failing")
    assert parent_of(step) == workflow.context.span_id
    for span in (step, workflow):
        assert span.status.status_code == StatusCode.ERROR
        assert span.status.description is not None and "broken step" in span.status.description
        (exception,) = events(span, "exception")
        assert exception["exception.type"] == "ValueError"
        assert exception["exception.message"] == "broken step"
    assert attrs(workflow)["dbos.workflow.status"] == "ERROR"
    assert "dbos.workflow.cancelled" not in attrs(workflow)


async def test_cancelling_a_sleeping_workflow_is_not_an_error(
    dbos: DBOS, tracing: Tracing, signals: Signals
) -> None:
    with SetWorkflowID("otel-cancel"):
        handle = await dbos.start_workflow(sleeper)
    with anyio.fail_after(10):
        await signals.waiting["otel-cancel"].wait()
    assert tracing.named("workflow otel.sleeper") == []  # still open
    await dbos.cancel_workflow("otel-cancel")
    with pytest.raises(WorkflowCancelledError):
        await handle.get_result()
    await signals.ended("otel-cancel")

    workflow = tracing.one("workflow otel.sleeper")
    sleep = tracing.one("sleep")
    assert workflow.status.status_code == StatusCode.UNSET
    assert events(workflow, "exception") == []
    assert attrs(workflow)["dbos.workflow.cancelled"] is True
    assert attrs(workflow)["dbos.workflow.status"] == "CANCELLED"
    assert parent_of(sleep) == workflow.context.span_id
    assert sleep.context.trace_id == workflow.context.trace_id
    assert attrs(sleep)["dbos.workflow.id"] == "otel-cancel"
    assert isinstance(attrs(sleep)["dbos.step.id"], int)
    assert not math.isinf(attrs(sleep)["dbos.wait.until"])
    assert sleep.end_time is not None and workflow.end_time is not None
    assert sleep.end_time <= workflow.end_time


async def test_a_child_workflow_is_in_its_parents_trace(
    dbos: DBOS, tracing: Tracing, signals: Signals
) -> None:
    _user_tracer[:] = [tracing.tracer]
    with tracing.tracer.start_as_current_span("caller") as caller:
        with SetWorkflowID("otel-parent"):
            handle = await dbos.start_workflow(parent, 1)
    assert await handle.get_result() == 2
    await signals.ended("otel-parent")
    await signals.ended("otel-child")

    parent_span = tracing.one("workflow otel.parent")
    child_span = tracing.one("workflow otel.child")
    child_step = tracing.one("step otel.fetch")
    trace_id = caller.get_span_context().trace_id
    assert {s.context.trace_id for s in tracing.spans()} == {trace_id}
    assert parent_of(parent_span) == caller.get_span_context().span_id
    assert parent_of(child_span) == parent_span.context.span_id
    assert parent_of(child_step) == child_span.context.span_id
    assert attrs(child_span)["dbos.workflow.id"] == "otel-child"


async def test_transactions_are_spans_too(dbos: DBOS, tracing: Tracing, signals: Signals) -> None:
    _user_tracer[:] = [tracing.tracer]
    with SetWorkflowID("otel-tx"):
        assert await (await dbos.start_workflow(transactions, 1)).get_result() == 2
    await signals.ended("otel-tx")

    workflow = tracing.one("workflow otel.transactions")
    good, bad = tracing.one("transaction otel.insert"), tracing.one("transaction otel.bad_sql")
    assert parent_of(good) == parent_of(bad) == workflow.context.span_id
    assert parent_of(tracing.one("user.sql")) == good.context.span_id
    assert good.status.status_code == StatusCode.UNSET
    assert attrs(good)["dbos.step.attempt"] == 1
    assert bad.status.status_code == StatusCode.ERROR
    (exception,) = events(bad, "exception")
    assert "no_such_table" in exception["exception.message"]
    assert workflow.status.status_code == StatusCode.UNSET  # the workflow caught it


async def test_recv_waits_are_spans(dbos: DBOS, tracing: Tracing, signals: Signals) -> None:
    with SetWorkflowID("otel-recv"):
        handle = await dbos.start_workflow(listener)
    with anyio.fail_after(10):
        await signals.waiting["otel-recv"].wait()
    await dbos.send("otel-recv", "hello", topic="greeting")
    assert await handle.get_result() == ["hello", None]
    await signals.ended("otel-recv")

    workflow = tracing.one("workflow otel.listener")
    got, missed = sorted(tracing.named("recv"), key=lambda s: s.start_time or 0)
    for span, topic, timed_out in ((got, "greeting", False), (missed, "nothing", True)):
        assert parent_of(span) == workflow.context.span_id
        assert attrs(span)["dbos.recv.topic"] == topic
        assert attrs(span)["dbos.recv.timed_out"] is timed_out
        assert attrs(span)["dbos.workflow.id"] == "otel-recv"
    assert attrs(got)["dbos.step.id"] != attrs(missed)["dbos.step.id"]


async def test_a_resumed_workflow_joins_its_first_callers_trace(
    dbos: DBOS, tracing: Tracing, signals: Signals
) -> None:
    with tracing.tracer.start_as_current_span("caller") as caller:
        with SetWorkflowID("otel-resume"):
            handle = await dbos.start_workflow(resumable)
    with anyio.fail_after(10):
        await signals.waiting["otel-resume"].wait()
    await dbos.cancel_workflow("otel-resume")
    await signals.ended("otel-resume")
    signals.finished.pop("otel-resume")
    signals.waiting.pop("otel-resume")

    handle = await dbos.resume_workflow("otel-resume")
    with anyio.fail_after(10):
        await signals.waiting["otel-resume"].wait()
    await dbos.send("otel-resume", "!", topic="go")
    assert await handle.get_result() == "A!"
    await signals.ended("otel-resume")

    first, second = sorted(
        tracing.named("workflow otel.resumable"), key=lambda s: s.start_time or 0
    )
    trace_id = caller.get_span_context().trace_id
    assert {s.context.trace_id for s in tracing.spans()} == {trace_id}
    assert attrs(first)["dbos.workflow.cancelled"] is True
    assert parent_of(first) == caller.get_span_context().span_id
    assert parent_of(second) == caller.get_span_context().span_id
    assert attrs(second)["dbos.workflow.origin"] == "resume"
    assert attrs(second)["dbos.workflow.status"] == "SUCCESS"
    assert attrs(second)["dbos.replayed_steps"] >= 1
    # The step ran once, in the first execution: the resume replayed it.
    (step,) = tracing.named("step otel.shout")
    assert parent_of(step) == first.context.span_id
    first_recv, second_recv = sorted(tracing.named("recv"), key=lambda s: s.start_time or 0)
    assert parent_of(first_recv) == first.context.span_id
    assert parent_of(second_recv) == second.context.span_id


async def test_cancelling_a_workflow_inside_a_step_ends_the_step_span(
    dbos: DBOS, tracing: Tracing, signals: Signals
) -> None:
    _in_step["entered"] = asyncio.Event()
    with SetWorkflowID("otel-stuck"):
        handle = await dbos.start_workflow(stuck)
    with anyio.fail_after(10):
        await _in_step["entered"].wait()
    await dbos.cancel_workflow("otel-stuck")
    with pytest.raises(WorkflowCancelledError):
        await handle.get_result()
    await signals.ended("otel-stuck")

    workflow = tracing.one("workflow otel.stuck")
    assert attrs(workflow)["dbos.workflow.cancelled"] is True
    step = tracing.one("step otel.blocking")  # fails: never ended, never exported
    assert parent_of(step) == workflow.context.span_id
    assert step.status.status_code != StatusCode.ERROR


async def test_a_shutdown_stops_the_workflow_span_without_error(db_url: str) -> None:
    tracing, signals = Tracing(), Signals()
    try:
        async with DBOS(
            database_url=db_url,
            app_version="test",
            observers=[OpenTelemetry(tracing.provider), signals],
        ) as dbos:
            with SetWorkflowID("otel-stopped"):
                await dbos.start_workflow(sleeper)
            with anyio.fail_after(10):
                await signals.waiting["otel-stopped"].wait()
        await signals.ended("otel-stopped")
    finally:
        tracing.provider.shutdown()
    workflow = tracing.one("workflow otel.sleeper")
    assert workflow.status.status_code == StatusCode.UNSET
    assert attrs(workflow)["dbos.workflow.status"] == "STOPPED"
    assert attrs(workflow)["dbos.workflow.stopped"] is True
    assert "dbos.workflow.cancelled" not in attrs(workflow)
    assert parent_of(tracing.one("sleep")) == workflow.context.span_id


# -- across runtimes: enqueue here, dequeue there ------------------------------------------


async def test_a_dequeue_in_another_runtime_joins_the_enqueuers_trace(db_url: str) -> None:
    """Runtime A enqueues for app version "consumer", which only runtime B runs."""
    producer, consumer = Tracing(), Tracing()
    signals = Signals()
    _user_tracer[:] = [consumer.tracer]
    try:
        async with DBOS(
            database_url=db_url,
            app_version="consumer",
            executor_id="consumer",
            observers=[OpenTelemetry(consumer.provider), signals],
        ):
            async with DBOS(
                database_url=db_url,
                app_version="test",
                executor_id="producer",
                observers=[OpenTelemetry(producer.provider)],
            ):
                # A was launched last: Queue.enqueue outside a workflow goes through it.
                with producer.tracer.start_as_current_span("caller") as caller:
                    with SetWorkflowID("otel-queued"), SetEnqueueOptions(app_version="consumer"):
                        handle = await QUEUE.enqueue(queued, 4)
                assert await handle.get_result() == 5
                await signals.ended("otel-queued")
    finally:
        producer.provider.shutdown()
        consumer.provider.shutdown()

    enqueue = producer.one("enqueue otel_queue")
    assert [s.name for s in producer.spans()] == ["enqueue otel_queue", "caller"]
    workflow = consumer.one("workflow otel.queued")
    step = consumer.one("step otel.fetch")
    trace_id = caller.get_span_context().trace_id
    assert enqueue.kind == SpanKind.PRODUCER
    assert parent_of(enqueue) == caller.get_span_context().span_id
    assert attrs(enqueue) == {
        "dbos.workflow.id": "otel-queued",
        "dbos.workflow.name": "otel.queued",
        "dbos.queue.name": "otel_queue",
    }
    assert workflow.kind == SpanKind.CONSUMER
    assert ids(workflow)[0] == step.context.trace_id == enqueue.context.trace_id == trace_id
    assert parent_of(workflow) == enqueue.context.span_id
    assert parent_of(step) == workflow.context.span_id
    assert attrs(workflow)["dbos.queue.name"] == "otel_queue"
    assert attrs(workflow)["dbos.workflow.origin"] == "dequeue"
    assert attrs(workflow)["dbos.executor.id"] == "consumer"
    assert attrs(workflow)["dbos.app.version"] == "consumer"


# -- payloads ------------------------------------------------------------------------------


async def test_payloads_stay_out_of_spans_by_default(
    dbos: DBOS, tracing: Tracing, signals: Signals
) -> None:
    with SetWorkflowID("otel-private"):
        assert await (await dbos.start_workflow(echo, "secret", tag="!")).get_result() == "SECRET!"
    await signals.ended("otel-private")
    for span in tracing.spans():
        assert not any(key.endswith((".input", ".output")) for key in attrs(span)), span.name
        assert "secret" not in json.dumps(attrs(span)).lower()


async def test_capture_payloads_records_truncated_json(db_url: str) -> None:
    tracing, signals = Tracing(), Signals()
    long_text = "x" * (PAYLOAD_CHARS * 2)
    try:
        async with DBOS(
            database_url=db_url,
            app_version="test",
            observers=[OpenTelemetry(tracing.provider, capture_payloads=True), signals],
        ) as dbos:
            with SetWorkflowID("otel-short"):
                assert await (await dbos.start_workflow(echo, "hi", tag="!")).get_result() == "HI!"
            with SetWorkflowID("otel-long"):
                result = await (await dbos.start_workflow(echo, long_text, tag="")).get_result()
            assert result == long_text.upper()
            await signals.ended("otel-short")
            await signals.ended("otel-long")
    finally:
        tracing.provider.shutdown()

    short, long = (
        next(s for s in tracing.named("workflow otel.echo") if attrs(s)["dbos.workflow.id"] == i)
        for i in ("otel-short", "otel-long")
    )
    assert json.loads(attrs(short)["dbos.workflow.input"]) == {
        "args": ["hi"],
        "kwargs": {"tag": "!"},
    }
    assert json.loads(attrs(short)["dbos.workflow.output"]) == "HI!"
    short_step = next(s for s in tracing.named("step otel.shout") if parent_of(s) == ids(short)[1])
    assert json.loads(attrs(short_step)["dbos.step.output"]) == "HI"

    for key in ("dbos.workflow.input", "dbos.workflow.output"):
        value = attrs(long)[key]
        assert len(value) == PAYLOAD_CHARS + 1 and value.endswith("…"), key
    long_step = next(s for s in tracing.named("step otel.shout") if parent_of(s) == ids(long)[1])
    assert attrs(long_step)["dbos.step.output"].startswith('"XXXX')
    assert len(attrs(long_step)["dbos.step.output"]) == PAYLOAD_CHARS + 1


# -- SIGKILL, then recovery in a new process ---------------------------------------------


class Child:
    """A run of otel_app.py whose stdout lines the test reads one by one, then kills."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    @classmethod
    async def start(cls, *argv: str, env: dict[str, str]) -> Child:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            str(APP),
            *argv,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env={**os.environ, **env},
        )
        return cls(proc)

    async def wait_for(self, prefix: str, within: float = 30) -> str:
        """Read lines until one starts with ``prefix``: the child's own output is the event."""
        assert self.proc.stdout is not None and self.proc.stderr is not None
        with anyio.fail_after(within):
            while line := (await self.proc.stdout.readline()).decode():
                if line.startswith(prefix):
                    return line.strip()
            err = (await self.proc.stderr.read()).decode()
        raise AssertionError(f"child exited before {prefix!r}: {err[-3000:]}")

    async def kill(self) -> None:
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGKILL)
        await self.proc.wait()

    async def finish(self, within: float = 30) -> int:
        with anyio.fail_after(within):
            return await self.proc.wait()


@pytest.fixture
async def run(db_url: str, tmp_path: Path) -> AsyncIterator[Any]:
    children: list[Child] = []

    async def start(mode: str, spans: Path, **env: str) -> Child:
        found = await Child.start(mode, db_url, str(spans), str(tmp_path / "ledger"), env=env)
        children.append(found)
        return found

    yield start
    for found in children:
        await found.kill()


async def read_spans(path: Path) -> list[dict[str, Any]]:
    text = await anyio.Path(path).read_text() if await anyio.Path(path).exists() else ""
    return [json.loads(line) for line in text.splitlines()]


async def test_recovery_after_sigkill_continues_the_trace(run: Any, tmp_path: Path) -> None:
    trace_id, caller_parent = secrets.token_hex(16), secrets.token_hex(8)
    first_spans, second_spans = tmp_path / "first.jsonl", tmp_path / "second.jsonl"

    first = await run(
        "start", first_spans, HANG_IN_TWO="1", TRACEPARENT=f"00-{trace_id}-{caller_parent}-01"
    )
    await first.wait_for("in-two")
    await first.kill()
    assert first.proc.returncode == -signal.SIGKILL

    second = await run("recover", second_spans)
    assert await second.wait_for("result") == "result 60"
    assert await second.finish() == 0

    before, after = await read_spans(first_spans), await read_spans(second_spans)
    # The first run ended the caller's span and step one's; its workflow span
    # and step two's were open when it died.
    assert sorted(s["name"] for s in before) == ["caller", "step __main__.step_one"]
    caller = next(s for s in before if s["name"] == "caller")
    step_one = next(s for s in before if s["name"] == "step __main__.step_one")
    assert caller["trace_id"] == step_one["trace_id"] == trace_id
    assert caller["parent_span_id"] == caller_parent

    # The recovery: one workflow span in the same trace, under the caller, and
    # a span for step two only (step one was replayed from its record).
    assert sorted(s["name"] for s in after) == [
        "step __main__.step_two",
        "workflow __main__.two_steps",
    ]
    workflow = next(s for s in after if s["name"].startswith("workflow"))
    step_two = next(s for s in after if s["name"].startswith("step"))
    assert workflow["trace_id"] == step_two["trace_id"] == trace_id
    assert workflow["parent_span_id"] == caller["span_id"]
    assert step_two["parent_span_id"] == workflow["span_id"]
    assert workflow["span_id"] != step_one["parent_span_id"]  # a new execution, a new span
    found = workflow["attributes"]
    assert found["dbos.workflow.id"] == "wf-otel"
    assert found["dbos.workflow.origin"] == "recovery"
    assert found["dbos.recovery.attempt"] >= 1
    assert found["dbos.replayed_steps"] >= 1
    assert found["dbos.workflow.status"] == "SUCCESS"
    assert found["dbos.executor.id"] == "local"
    assert workflow["status"] == "UNSET"

    ledger = (await anyio.Path(tmp_path / "ledger").read_text()).splitlines()
    assert ledger == ["one", "two:start", "two:start", "two:done"]
