"""An application test_otel.py runs as a subprocess, SIGKILLs, and runs again to recover.

    python otel_app.py MODE DATABASE_URL SPANS_FILE LEDGER_FILE

MODE ``start`` starts workflow ``wf-otel`` inside a ``caller`` span whose
parent is ``$TRACEPARENT`` (the test picks the trace ID), and waits for it;
with ``$HANG_IN_TWO`` set, step two parks until the process is killed.
MODE ``recover`` launches (the same executor ID: its startup recovery takes
the workflow back) and waits for the workflow's result.

Every span is appended to SPANS_FILE as one JSON line as soon as it ends
(flushed per span, so a SIGKILL loses only the spans still open). Step
bodies append a line to LEDGER_FILE each time they run. The process prints a
line at each point the test waits for.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Sequence
from typing import IO, Any

from opentelemetry.propagate import extract
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult

from dbos_async import DBOS, SetWorkflowID
from dbos_async.contrib.otel import OpenTelemetry

WORKFLOW_ID = "wf-otel"


def say(line: str) -> None:
    print(line, flush=True)


class JsonLinesExporter(SpanExporter):
    """Appends each finished span to a file as one JSON line, flushed at once."""

    def __init__(self, path: str) -> None:
        self._file: IO[str] = open(path, "a", encoding="utf-8")

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        for span in spans:
            self._file.write(json.dumps(as_dict(span)) + "\n")
            self._file.flush()
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        self._file.close()


def as_dict(span: ReadableSpan) -> dict[str, Any]:
    context = span.get_span_context()
    assert context is not None
    return {
        "name": span.name,
        "trace_id": format(context.trace_id, "032x"),
        "span_id": format(context.span_id, "016x"),
        "parent_span_id": format(span.parent.span_id, "016x") if span.parent else None,
        "kind": span.kind.name,
        "status": span.status.status_code.name,
        "attributes": dict(span.attributes or {}),
        "events": [e.name for e in span.events],
    }


def ledger(entry: str) -> None:
    with open(sys.argv[4], "a", encoding="utf-8") as f:
        f.write(entry + "\n")


@DBOS.step()
async def step_one(x: int) -> int:
    ledger("one")
    return x + 1


@DBOS.step()
async def step_two(x: int) -> int:
    ledger("two:start")
    if os.environ.get("HANG_IN_TWO"):
        say("in-two")
        await asyncio.Event().wait()  # parked here until SIGKILL
    ledger("two:done")
    return x * 10


@DBOS.workflow()
async def two_steps(x: int) -> int:
    return await step_two(await step_one(x))


async def main() -> None:
    mode, url, spans_file = sys.argv[1], sys.argv[2], sys.argv[3]
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(JsonLinesExporter(spans_file)))
    try:
        async with DBOS(
            database_url=url,
            app_version="test",
            executor_id="local",
            observers=[OpenTelemetry(provider)],
        ) as dbos:
            say("launched")
            if mode == "start":
                caller = extract({"traceparent": os.environ["TRACEPARENT"]})
                tracer = provider.get_tracer("otel_app")
                with tracer.start_as_current_span("caller", context=caller):
                    with SetWorkflowID(WORKFLOW_ID):
                        handle = await dbos.start_workflow(two_steps, 5)
                say("started")
            else:
                handle = await dbos.retrieve_workflow(WORKFLOW_ID)
            say(f"result {await handle.get_result()!r}")
    finally:
        provider.shutdown()


if __name__ == "__main__":
    asyncio.run(main())
