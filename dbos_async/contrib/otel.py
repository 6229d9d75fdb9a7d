"""OpenTelemetry traces (extra ``otel``, opentelemetry-api only): ``observers=[OpenTelemetry()]``.

Spans: ``workflow <name>`` (one per execution), ``step <name>`` and
``transaction <name>`` (one per run of the body, retries as events),
``enqueue <queue>`` (PRODUCER), and the durable waits ``sleep`` and ``recv``.
The caller's W3C trace context is stored with the workflow when it is
started or enqueued, so its first run, a dequeue in another process, a
recovery after a crash and a resume all join the caller's trace. A step
replayed from its record makes no span: the workflow span counts them in
``dbos.replayed_steps``. Cancellation is not an error. Inputs and outputs go
into spans only with ``capture_payloads=True``.

It never sets a global provider: it uses the one given, else whatever
``opentelemetry.trace.get_tracer_provider()`` returns (a no-op until the
application configures one). While a step's body runs, its span is the
current span, so spans the body makes (an instrumented HTTP client, say)
nest under it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.propagate import extract, inject
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from dbos_async import serialization
from dbos_async.observers import (
    CANCELLED,
    ERROR,
    STOPPED,
    Observer,
    StepEvent,
    WaitEvent,
    WorkflowEvent,
)

PAYLOAD_CHARS = 2000
"""Longest input or output put into a span with ``capture_payloads``."""

_Key = tuple[str, str, int]


class OpenTelemetry(Observer):
    """An observer that makes OpenTelemetry spans (see the module docstring).

    Args:
        tracer_provider: Where spans go; None: the global provider.
        capture_payloads: Also record workflow inputs and outputs, and step
            outputs, as span attributes (JSON, truncated). Off by default:
            payloads often hold personal data.
    """

    def __init__(
        self, tracer_provider: trace.TracerProvider | None = None, *, capture_payloads: bool = False
    ) -> None:
        self._tracer = trace.get_tracer("dbos_async", tracer_provider=tracer_provider)
        self.capture_payloads = capture_payloads
        # Open spans and the context tokens attached for them, per execution and call.
        self._workflows: dict[str, tuple[Span, object]] = {}
        self._steps: dict[_Key, tuple[Span, object]] = {}
        self._waits: dict[_Key, Span] = {}

    # -- trace context ---------------------------------------------------------------

    def start_context(self) -> Mapping[str, str] | None:
        """The current trace context (the caller's span), to store with the workflow."""
        carrier: dict[str, str] = {}
        inject(carrier)
        return carrier or None

    def workflow_enqueued(
        self, workflow_id: str, name: str, queue_name: str
    ) -> Mapping[str, str] | None:
        """An ``enqueue <queue>`` PRODUCER span; its context is what the dequeue joins."""
        span = self._tracer.start_span(
            f"enqueue {queue_name}",
            kind=SpanKind.PRODUCER,
            attributes={
                "dbos.workflow.id": workflow_id,
                "dbos.workflow.name": name,
                "dbos.queue.name": queue_name,
            },
        )
        carrier: dict[str, str] = {}
        inject(carrier, context=trace.set_span_in_context(span))
        span.end()
        return carrier

    # -- workflows --------------------------------------------------------------------

    def workflow_started(self, workflow: WorkflowEvent) -> None:
        """Open the execution's span (a child of the stored context) and make it current."""
        parent = extract(dict(workflow.trace_context)) if workflow.trace_context else None
        attributes: dict[str, Any] = {
            "dbos.workflow.id": workflow.workflow_id,
            "dbos.workflow.name": workflow.name,
            "dbos.app.version": workflow.app_version,
            "dbos.executor.id": workflow.executor_id,
            "dbos.workflow.origin": workflow.origin,
            "dbos.recovery.attempt": workflow.recovery_attempt,
        }
        if workflow.queue_name:
            attributes["dbos.queue.name"] = workflow.queue_name
        if self.capture_payloads:
            attributes["dbos.workflow.input"] = _payload(
                {"args": list(workflow.args), "kwargs": dict(workflow.kwargs or {})}
            )
        kind = SpanKind.CONSUMER if workflow.origin == "dequeue" else SpanKind.INTERNAL
        span = self._tracer.start_span(
            f"workflow {workflow.name}", context=parent, kind=kind, attributes=attributes
        )
        token = otel_context.attach(trace.set_span_in_context(span))
        self._workflows[workflow.workflow_id] = (span, token)

    def workflow_finished(
        self,
        workflow: WorkflowEvent,
        status: str,
        error: BaseException | None,
        output: Any,
        replayed_steps: int,
    ) -> None:
        """Close the execution's span with how it ended."""
        found = self._workflows.pop(workflow.workflow_id, None)
        if found is None:
            return
        span, token = found
        span.set_attribute("dbos.workflow.status", status)
        span.set_attribute("dbos.replayed_steps", replayed_steps)
        if status == ERROR and error is not None:
            span.record_exception(error)
            span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"))
        elif status == CANCELLED:
            span.set_attribute("dbos.workflow.cancelled", True)  # not an error
        elif status == STOPPED:
            span.set_attribute("dbos.workflow.stopped", True)
        elif self.capture_payloads:
            span.set_attribute("dbos.workflow.output", _payload(output))
        span.end()
        _detach(token)

    # -- steps and transactions -----------------------------------------------------------

    def step_started(self, step: StepEvent, attempt: int) -> None:
        """Open the step's span on its first attempt; later attempts are events of it."""
        key = _key(step)
        found = self._steps.get(key)
        if found is not None:
            found[0].add_event("attempt", {"dbos.step.attempt": attempt})
            found[0].set_attribute("dbos.step.attempt", attempt)
            return
        workflow = self._workflows.get(step.workflow.workflow_id)
        parent = trace.set_span_in_context(workflow[0]) if workflow is not None else None
        span = self._tracer.start_span(
            f"{step.kind} {step.name}",
            context=parent,
            attributes={
                "dbos.workflow.id": step.workflow.workflow_id,
                "dbos.workflow.name": step.workflow.name,
                "dbos.step.id": step.step_id,
                "dbos.step.branch": step.branch,
                "dbos.step.attempt": attempt,
                "dbos.app.version": step.workflow.app_version,
                "dbos.executor.id": step.workflow.executor_id,
            },
        )
        token = otel_context.attach(trace.set_span_in_context(span))
        self._steps[key] = (span, token)

    def step_retried(
        self, step: StepEvent, attempt: int, error: BaseException, delay_seconds: float
    ) -> None:
        """A ``retry`` event on the step's span."""
        found = self._steps.get(_key(step))
        if found is not None:
            found[0].add_event(
                "retry",
                {
                    "dbos.step.attempt": attempt,
                    "exception.type": type(error).__qualname__,
                    "exception.message": str(error),
                    "dbos.retry.delay_seconds": delay_seconds,
                },
            )

    def step_finished(
        self, step: StepEvent, status: str, error: BaseException | None, attempts: int, output: Any
    ) -> None:
        """Close the step's span."""
        found = self._steps.pop(_key(step), None)
        if found is None:
            return
        span, token = found
        span.set_attribute("dbos.step.attempts", attempts)
        if status in (CANCELLED, STOPPED):
            span.set_attribute("dbos.step.interrupted", status)  # not an error
        elif error is not None:
            span.record_exception(error)
            span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"))
        elif self.capture_payloads:
            span.set_attribute("dbos.step.output", _payload(output))
        span.end()
        _detach(token)

    # -- durable waits ----------------------------------------------------------------------

    def wait_started(self, wait: WaitEvent) -> None:
        """A ``sleep`` or ``recv`` span, under the workflow's."""
        workflow = self._workflows.get(wait.workflow.workflow_id)
        parent = trace.set_span_in_context(workflow[0]) if workflow is not None else None
        attributes: dict[str, Any] = {
            "dbos.workflow.id": wait.workflow.workflow_id,
            "dbos.step.id": wait.step_id,
        }
        if not math.isinf(wait.until):
            attributes["dbos.wait.until"] = wait.until
        if wait.topic is not None:
            attributes["dbos.recv.topic"] = wait.topic
        span = self._tracer.start_span(wait.kind, context=parent, attributes=attributes)
        self._waits[(wait.workflow.workflow_id, wait.branch, wait.step_id)] = span

    def wait_finished(self, wait: WaitEvent, timed_out: bool) -> None:
        """Close it; a ``recv`` says whether it timed out."""
        span = self._waits.pop((wait.workflow.workflow_id, wait.branch, wait.step_id), None)
        if span is not None:
            if wait.kind == "recv":
                span.set_attribute("dbos.recv.timed_out", timed_out)
            span.end()


def _key(step: StepEvent) -> _Key:
    return (step.workflow.workflow_id, step.branch, step.step_id)


def _detach(token: object) -> None:
    # Detached in the task that attached it; a cancelled task may end elsewhere.
    try:
        otel_context.detach(token)  # type: ignore[arg-type]
    except Exception:
        pass


def _payload(value: Any) -> str:
    try:
        text = serialization.encode(value)
    except Exception:
        text = repr(value)
    return text if len(text) <= PAYLOAD_CHARS else text[:PAYLOAD_CHARS] + "…"
