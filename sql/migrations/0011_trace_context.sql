-- The W3C trace context of whoever started or enqueued a workflow (issue 13):
-- a JSON object of propagation headers ({"traceparent": ..., "tracestate": ...})
-- that an observer captured (dbos_async.contrib.otel). Every execution of the
-- workflow (the first, a dequeue elsewhere, a recovery, a resume) joins that
-- trace. NULL when no observer captured one: nothing is written otherwise.
ALTER TABLE workflow_status ADD COLUMN trace_context text;
