"""The dashboard's actions (cancel, resume, restart, fork): POSTs, checked before anything runs."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qs, quote

from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response

from dbos_async.dashboard.app import dashboard_of
from dbos_async.errors import DBOSError, WorkflowNotFoundError

logger = logging.getLogger("dbos_async.dashboard")

ACTIONS = ("cancel", "resume", "restart", "fork")


async def act(request: Request) -> Response:
    """``POST workflows/{id}/{action}``: 403 (cross-site, no HX-Request, read-only), 401, or do it.

    On success htmx is sent to the page of the workflow that now runs (the
    new one for restart and fork); every action is logged with its principal.
    """
    dash = dashboard_of(request)
    refused = dash.guard.refuse_action(request)
    if refused is not None:
        return refused
    principal = await dash.guard.principal(request)
    if principal is None:
        return PlainTextResponse("Log in first.", status_code=401)
    action = request.path_params["action"]
    workflow_id = request.path_params["workflow_id"]
    if action not in ACTIONS:
        return PlainTextResponse(f"No action {action!r}.", status_code=404)
    form = parse_qs((await request.body()).decode("utf-8", "replace"))
    await dash.source.open()
    try:
        target = await _run(dash.source.call, action, workflow_id, form)
    except WorkflowNotFoundError as exc:
        return PlainTextResponse(f"{action} failed: {exc}", status_code=404)
    except (DBOSError, ValueError) as exc:
        return PlainTextResponse(f"{action} failed: {exc}", status_code=409)
    logger.info(
        "dashboard: %s %s by %s%s",
        action,
        workflow_id,
        principal,
        f" (new workflow {target})" if target != workflow_id else "",
        extra={"action": f"dashboard_{action}", "workflow_id": workflow_id, "principal": principal},
    )
    location = str(request.url_for("workflow", workflow_id=quote(target, safe="")))
    return Response(status_code=204, headers={"hx-redirect": location})


async def _run(
    call: Callable[..., Awaitable[Any]], action: str, workflow_id: str, form: dict[str, list[str]]
) -> str:
    """Do ``action`` through ``call`` (``Source.call``); the ID of the workflow that runs now."""
    if action == "cancel":
        await call("cancel_workflow", workflow_id)
        return workflow_id
    if action == "resume":
        await call("resume_workflow", workflow_id)
        return workflow_id
    if action == "restart":
        handle = await call("restart_workflow", workflow_id)
        return str(handle.workflow_id)
    raw_step = (form.get("step") or [""])[0]
    try:
        step = int(raw_step)
    except ValueError:
        raise ValueError(f"fork needs the step to start from, got {raw_step!r}") from None
    version = (form.get("version") or [""])[0] or None
    handle = await call("fork_workflow", workflow_id, step, version)
    return str(handle.workflow_id)
