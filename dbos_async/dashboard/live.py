"""Live pages: server-sent events fed by the process's one LISTEN connection.

``events`` streams ``changed`` when a workflow's status changes (``w:``) or a
queue moves (``q:``); with ``?workflow=ID``, when that workflow changes, sets
an event or writes a stream, or (polled every ``POLL_SECONDS`` while the page
is open: the runtime sends no NOTIFY per step) records a call. The list
also polls the newest workflow's creation time every ``LIST_POLL_SECONDS``
(an index-only read): a start sends no NOTIFY either. The first change is
sent at once; a burst after it makes one more event per
``DEBOUNCE_SECONDS``; a comment every ``KEEPALIVE_SECONDS`` keeps proxies
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
LIST_POLL_SECONDS = 0.25  # the list's newest start (no NOTIFY announces a start)
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
    poll = POLL_SECONDS if workflow_id is not None else LIST_POLL_SECONDS
    with source.listener.watch_many(*topics) as watch:
        # Read before saying "connected": a change the client makes once it
        # hears that must differ from what is compared with.
        seen = await _state(source, workflow_id)
        yield "retry: 2000\n: connected\n\n"
        quiet = 0.0
        while True:
            if await watch.wait(poll):
                quiet = 0.0
                seen = await _state(source, workflow_id)
                yield CHANGED
                # At most one event per window: what fires meanwhile stays
                # flagged, and makes the next one right after it.
                await anyio.sleep(DEBOUNCE_SECONDS)
                continue
            quiet += poll
            now = await _state(source, workflow_id)
            if now != seen:
                seen, quiet = now, 0.0
                yield CHANGED
            elif quiet >= KEEPALIVE_SECONDS:
                quiet = 0.0
                yield ": keepalive\n\n"


async def _state(source: Source, workflow_id: str | None) -> tuple[Any, ...] | None:
    """What the poll compares: a workflow's progress, or the list's newest start."""
    async with source.connection() as conn:
        if workflow_id is None:
            return (await conn.fetchval(q(conn, "dashboard_watermark")),)
        row = await conn.fetchrow(q(conn, "dashboard_progress"), workflow_id)
    return tuple(row) if row is not None else None
