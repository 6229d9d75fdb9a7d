"""Workflow management: cancel, resume (and, as they land, list/restart/fork/delete).

One implementation serves the runtime and ``DBOSClient``: each function takes
the pool it works on, and the runtime passes itself where a workflow should
run here (``resume_workflow``) rather than on any runtime's internal queue.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from dbos_async.errors import WorkflowNotFoundError
from dbos_async.recovery import run_claimed
from dbos_async.systemdb import workflows as wf_table
from dbos_async.systemdb.pool import Pool, acquire
from dbos_async.validation import check_workflow_id
from dbos_async.workflow import now_ms

if TYPE_CHECKING:
    from dbos_async.runtime import Runtime

logger = logging.getLogger(__name__)

INTERNAL_QUEUE = "_dbos_internal"
"""The queue every runtime dequeues from without limits: resumed, restarted and
forked workflows started by a client land here."""


async def cancel_workflow(pool: Pool, workflow_id: str) -> None:
    """Mark a PENDING or ENQUEUED workflow CANCELLED; a finished one is left as it is.

    The runtime running it is told through NOTIFY and interrupts it at once:
    its running step gets CancelledError and no later step starts.

    Raises:
        WorkflowNotFoundError: no workflow has this ID.
    """
    check_workflow_id(workflow_id)
    async with acquire(pool) as conn:
        before = await wf_table.cancel_workflow(conn, workflow_id, now_ms())
    if before is None:
        raise WorkflowNotFoundError(workflow_id)
    logger.info(
        "cancel requested (was %s)",
        before,
        extra={"action": "cancel_workflow", "workflow_id": workflow_id},
    )


async def resume_workflow(pool: Pool, workflow_id: str, runtime: Runtime | None = None) -> None:
    """Continue a CANCELLED, ERROR or MAX_RECOVERY_ATTEMPTS_EXCEEDED workflow.

    It replays from the start, returning its recorded steps, so it goes on
    from its last completed step, with no deadline. With ``runtime`` it runs
    there; without (a client), it is enqueued for any runtime to pick up.
    Any other status is left as it is.

    Raises:
        WorkflowNotFoundError: no workflow has this ID.
    """
    check_workflow_id(workflow_id)
    async with acquire(pool) as conn:
        row = await wf_table.resume_workflow(
            conn,
            workflow_id,
            runtime.executor_id if runtime is not None else None,
            runtime.app_version if runtime is not None else None,
            INTERNAL_QUEUE,
            now_ms(),
        )
        if row is None:
            raise WorkflowNotFoundError(workflow_id)
        if runtime is not None and row["workflow_id"] is not None:
            await run_claimed(runtime, conn, [row])
