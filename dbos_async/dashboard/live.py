"""Live pages: server-sent events fed by the process's one LISTEN connection.

``events`` streams ``changed`` when a workflow's status changes (``w:``) or a
queue moves (``q:``); with ``?workflow=ID``, when that workflow changes, sets
an event or writes a stream, or (polled every ``POLL_SECONDS`` while the page
is open: the runtime sends no NOTIFY per step) records a call. Bursts are
debounced into one event; a comment every ``KEEPALIVE_SECONDS`` keeps proxies
from closing the stream. Each client holds one watch, a flag: a slow reader
costs one pending event, never a growing buffer. The page's script closes
the stream while the tab is hidden.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import anyio
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response, StreamingResponse

from dbos_async.dashboard.app import dashboard_of
from dbos_async.dashboard.source import Source
from dbos_async.systemdb.queries import q

DEBOUNCE_SECONDS = 0.25
KEEPALIVE_SECONDS = 15.0
POLL_SECONDS = 2.0
CHANGED = "event: changed\ndata: {}\n\n"


async def events(request: Request) -> Response:
    """``GET events[?workflow=ID]``: a ``text/event-stream`` of ``changed`` events."""
    dash = dashboard_of(request)
    if await dash.guard.principal(request) is None:
        return PlainTextResponse("Log in first.", status_code=401)
    await dash.source.open()
    workflow_id = request.query_params.get("workflow") or None
    return StreamingResponse(
        _stream(dash.source, workflow_id),
        media_type="text/event-stream",
        headers={"x-accel-buffering": "no"},
    )


async def _stream(source: Source, workflow_id: str | None) -> AsyncIterator[str]:
    topics = (
        [("w", workflow_id), ("e", workflow_id), ("s", workflow_id)]
        if workflow_id is not None
        else [("w", None), ("q", None)]
    )
    with source.listener.watch_many(*topics) as watch:
        yield "retry: 2000\n: connected\n\n"
        seen = await _progress(source, workflow_id) if workflow_id is not None else None
        quiet = 0.0
        wait = POLL_SECONDS if workflow_id is not None else KEEPALIVE_SECONDS
        while True:
            if await watch.wait(wait):
                await anyio.sleep(DEBOUNCE_SECONDS)  # one event for a burst
                await watch.wait(0)  # what fired meanwhile is in this event
                quiet = 0.0
                if workflow_id is not None:
                    seen = await _progress(source, workflow_id)
                yield CHANGED
                continue
            quiet += wait
            if workflow_id is not None:
                now = await _progress(source, workflow_id)
                if now != seen:
                    seen = now
                    quiet = 0.0
                    yield CHANGED
                    continue
            if quiet >= KEEPALIVE_SECONDS:
                quiet = 0.0
                yield ": keepalive\n\n"


async def _progress(source: Source, workflow_id: str | None) -> tuple[Any, ...] | None:
    async with source.connection() as conn:
        row = await conn.fetchrow(q(conn, "dashboard_progress"), workflow_id)
    return tuple(row) if row is not None else None
