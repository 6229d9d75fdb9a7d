"""Strict idempotency keys: ``SetWorkflowID(..., on_conflict="raise")``.

A start or enqueue under an ID that exists normally returns the first
execution's handle, whatever the inputs. In strict mode the recorded inputs
are read back (one round trip, only when the ID was taken) and compared, as
JSON values, with the ones given: a key reused with other inputs is refused.
"""

from __future__ import annotations

import orjson

from dbos_async.errors import WorkflowConflictError
from dbos_async.systemdb import workflows as wf_table
from dbos_async.systemdb.pool import Connection


async def check_same_inputs(conn: Connection, workflow_id: str, name: str, inputs: str) -> None:
    """Raise unless workflow ``workflow_id`` was recorded with these inputs. One round trip.

    Raises:
        WorkflowConflictError: its recorded inputs differ (``different_inputs``).
    """
    row = await wf_table.select_workflow_status(conn, workflow_id)
    if row is None:  # deleted since: nothing to conflict with
        return
    if orjson.loads(row["inputs"]) != orjson.loads(inputs):
        raise WorkflowConflictError(workflow_id, row["name"], name, different_inputs=True)
