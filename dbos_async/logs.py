"""Logs that name the workflow: ``DBOS.logger``, and the runtime's own loggers.

Every record made inside a workflow (its code, its steps' bodies, the
runtime's work for it) gets the attributes ``workflow_id``, ``app_version``
and, inside a step, ``step_id``, unless the call passed them itself in
``extra``. A formatter can then print them (``%(workflow_id)s``) or ship
them as fields of a JSON line; outside workflows the attributes are absent.
"""

from __future__ import annotations

import logging

from dbos_async.context import current_step_id, current_workflow

APP_LOGGER = "dbos_async.app"
"""The name of ``DBOS.logger``: under ``dbos_async``, so the runtime's own
handler shows it when the application configured none."""


class WorkflowFields(logging.Filter):
    """Adds ``workflow_id``, ``step_id`` and ``app_version`` to records made inside workflows."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Add the fields (never drops a record)."""
        ctx = current_workflow.get()
        if ctx is None:
            return True
        fields = record.__dict__
        fields.setdefault("app_version", getattr(ctx.runtime, "app_version", None))
        if fields.setdefault("workflow_id", ctx.workflow_id) != ctx.workflow_id:
            return True  # about another workflow (given in extra): not this one's step
        step_id = current_step_id.get()
        if step_id is not None and step_id >= 0:
            fields.setdefault("step_id", step_id)
        return True


_FIELDS = WorkflowFields()


def get_logger(name: str) -> logging.Logger:
    """``logging.getLogger(name)``, whose records made inside workflows carry their fields.

    A filter on a logger applies to the records made through that logger,
    not to its children's: each of the runtime's modules takes its logger here.
    """
    found = logging.getLogger(name)
    if _FIELDS not in found.filters:
        found.addFilter(_FIELDS)
    return found
