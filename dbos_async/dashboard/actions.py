"""The dashboard's actions (cancel, resume, restart, fork): POSTs, checked before anything runs."""

from __future__ import annotations

import html
import logging
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qs, quote

from starlette.requests import Request
from starlette.responses import HTMLResponse, Response

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
    action = request.path_params["action"]
    workflow_id = request.path_params["workflow_id"]
    refused = dash.guard.refuse_action(request)
    if refused is not None:
        _audit(logging.WARNING, "refused", action, workflow_id, None, str(refused.status_code))
        return refused
    principal = await dash.guard.principal(request)
    if principal is None:
        _audit(logging.WARNING, "refused", action, workflow_id, None, "401")
        return _message("Log in first.", 401)
    if action not in ACTIONS:
        return _message(f"No action {action!r}.", 404)
    form = parse_qs((await request.body()).decode("utf-8", "replace"))
    await dash.source.open()
    try:
        target = await _run(dash.source.call, action, workflow_id, form)
    except WorkflowNotFoundError as exc:
        _audit(logging.INFO, "failed", action, workflow_id, principal, str(exc))
        return _message(f"{action} failed: {exc}", 404)
    except (DBOSError, ValueError) as exc:
        _audit(logging.INFO, "failed", action, workflow_id, principal, str(exc))
        return _message(f"{action} failed: {exc}", 409)
    _audit(
        logging.INFO,
        "done",
        action,
        workflow_id,
        principal,
        f"new workflow {target!r}" if target != workflow_id else "",
    )
    location = str(request.url_for("workflow", workflow_id=quote(target, safe="")))
    return Response(status_code=204, headers={"hx-redirect": location})


def _message(text: str, status_code: int) -> Response:
    # htmx swaps it into the page, and acts on any hx-* attribute it finds
    # there: the text (which repeats stored IDs) goes in escaped, as text.
    return HTMLResponse(html.escape(text), status_code=status_code)


def _audit(
    level: int, outcome: str, action: str, workflow_id: str, principal: str | None, detail: str
) -> None:
    # IDs and principals are repr'd: one with a newline cannot forge a log line.
    logger.log(
        level,
        "dashboard: %s %s of %r by %r%s",
        action,
        outcome,
        workflow_id,
        principal,
        f" ({detail})" if detail else "",
        extra={
            "action": f"dashboard_{action}",
            "outcome": outcome,
            "workflow_id": workflow_id,
            "principal": principal,
        },
    )


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
