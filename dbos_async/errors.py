"""Exceptions raised by dbos_async.

Every exception derives from one root, so ``except DBOSError`` catches them all::

    DBOSError
    ├── WorkflowNotFoundError           a workflow ID that is not recorded
    ├── WorkflowConflictError           one workflow ID, two different workflow functions
    ├── NonDeterministicWorkflowError   replay reached a step recorded under another name
    ├── WorkflowCancelledError          the awaited workflow was cancelled
    ├── MaxRecoveryAttemptsExceededError
    ├── MaxStepRetriesExceeded          a retried step failed on every attempt
    ├── QueueDeduplicatedError          a live deduplication ID on the same queue
    ├── SerializationError              a value that cannot be encoded (nothing was written)
    ├── WorkflowError                   a recorded error whose type cannot be rebuilt
    ├── NotInWorkflowError              a workflow-only call made outside a workflow
    └── DatabaseUnavailableError        Postgres cannot be reached

Data travels as attributes (``workflow_id``, ``step_id``, ``original_type``), never only in
the message text.
"""

from __future__ import annotations

from datetime import datetime

__all__ = [
    "DBOSError",
    "DatabaseUnavailableError",
    "MaxRecoveryAttemptsExceededError",
    "MaxStepRetriesExceeded",
    "NonDeterministicWorkflowError",
    "NotInWorkflowError",
    "QueueDeduplicatedError",
    "SerializationError",
    "WorkflowCancelledError",
    "WorkflowConflictError",
    "WorkflowError",
    "WorkflowNotFoundError",
]


class DBOSError(Exception):
    """The base of every error dbos_async raises on purpose."""

    def __init__(self, message: str | None = None) -> None:
        # The class docstring doubles as the default message.
        super().__init__(message or (type(self).__doc__ or "").strip())


class WorkflowNotFoundError(DBOSError):
    """No workflow is recorded under this ID."""

    def __init__(self, workflow_id: str, message: str | None = None) -> None:
        self.workflow_id = workflow_id
        super().__init__(message or f"No workflow is recorded under ID {workflow_id!r}")


class WorkflowConflictError(DBOSError):
    """This workflow ID is already used by a different workflow function.

    Or, with ``SetWorkflowID(..., on_conflict="raise")``, by the same function
    with different inputs (``different_inputs`` is then True).
    """

    def __init__(
        self,
        workflow_id: str,
        existing_name: str,
        requested_name: str,
        *,
        different_inputs: bool = False,
    ) -> None:
        self.workflow_id = workflow_id
        self.existing_name = existing_name
        self.requested_name = requested_name
        self.different_inputs = different_inputs
        if different_inputs:
            message = (
                f"Workflow ID {workflow_id!r} already ran {existing_name!r} with other"
                " inputs (on_conflict='raise')"
            )
        else:
            message = (
                f"Workflow ID {workflow_id!r} is already used by {existing_name!r}; "
                f"cannot start {requested_name!r} under it"
            )
        super().__init__(message)


class NonDeterministicWorkflowError(DBOSError):
    """Replay reached a step whose recorded function differs from the one called.

    Also raised where workflow code uses a construct whose outcome depends on
    timing (``asyncio.wait(return_when=FIRST_COMPLETED)``, ``as_completed``):
    ``message`` then names it.
    """

    def __init__(
        self,
        workflow_id: str,
        step_id: int,
        recorded: str,
        called: str,
        *,
        branch: str = "",
        message: str | None = None,
    ) -> None:
        self.workflow_id = workflow_id
        self.step_id = step_id
        self.branch = branch
        self.recorded_name = recorded
        self.called_name = called
        where = f"branch {branch!r} step {step_id}" if branch else f"step {step_id}"
        super().__init__(
            message
            or f"Workflow {workflow_id!r} {where}: recorded {recorded!r} but replay "
            f"called {called!r}; the workflow code is not deterministic"
        )


class WorkflowCancelledError(DBOSError):
    """The workflow was cancelled, by ``cancel_workflow`` or because its deadline passed.

    ``deadline_epoch_ms`` is the deadline when that is why (a timeout), else None.
    """

    def __init__(self, workflow_id: str, deadline_epoch_ms: int | None = None) -> None:
        self.workflow_id = workflow_id
        self.deadline_epoch_ms = deadline_epoch_ms
        if deadline_epoch_ms is None:
            super().__init__(f"Workflow {workflow_id!r} was cancelled")
        else:
            at = datetime.fromtimestamp(deadline_epoch_ms / 1000).astimezone()
            super().__init__(
                f"Workflow {workflow_id!r} timed out: its deadline passed at"
                f" {at.isoformat(timespec='milliseconds')}, and it was cancelled"
            )


class MaxRecoveryAttemptsExceededError(DBOSError):
    """The workflow was recovered more often than its max_recovery_attempts allows."""

    def __init__(self, workflow_id: str, max_attempts: int) -> None:
        self.workflow_id = workflow_id
        self.max_attempts = max_attempts
        super().__init__(
            f"Workflow {workflow_id!r} exceeded its {max_attempts} recovery attempts; "
            "it is marked MAX_RECOVERY_ATTEMPTS_EXCEEDED"
        )


class MaxStepRetriesExceeded(DBOSError):
    """A step raised on every one of its allowed attempts."""

    def __init__(self, step_name: str, max_attempts: int, last_error: BaseException | None) -> None:
        self.step_name = step_name
        self.max_attempts = max_attempts
        self.last_error = last_error
        super().__init__(
            f"Step {step_name!r} failed {max_attempts} times; last error: {last_error!r}"
        )


class QueueDeduplicatedError(DBOSError):
    """A workflow with this deduplication ID is already live on the queue."""

    def __init__(self, queue_name: str, deduplication_id: str) -> None:
        self.queue_name = queue_name
        self.deduplication_id = deduplication_id
        super().__init__(
            f"Queue {queue_name!r} already holds a live workflow with deduplication ID "
            f"{deduplication_id!r}"
        )


class SerializationError(DBOSError):
    """A value cannot be encoded as JSON, or recorded JSON cannot be decoded.

    Encoding fails before anything is written; a workflow whose recorded
    inputs cannot be decoded ends as ERROR with this error.
    """


class WorkflowError(DBOSError):
    """A recorded workflow or step error whose original type cannot be rebuilt."""

    def __init__(self, message: str | None = None, original_type: str | None = None) -> None:
        self.original_type = original_type
        super().__init__(message)


class NotInWorkflowError(DBOSError):
    """This call is only valid inside a workflow."""


class DatabaseUnavailableError(DBOSError):
    """The database cannot be reached."""
