"""dbos_async: asyncio-native durable workflows over PostgreSQL."""

from dbos_async.client import DBOSClient
from dbos_async.context import SetEnqueueOptions, SetWorkflowID, SetWorkflowTimeout
from dbos_async.dbos import DBOS
from dbos_async.errors import (
    DatabaseUnavailableError,
    DBOSError,
    MaxRecoveryAttemptsExceededError,
    MaxStepRetriesExceeded,
    NonDeterministicWorkflowError,
    NotInWorkflowError,
    QueueDeduplicatedError,
    SerializationError,
    WorkflowCancelledError,
    WorkflowConflictError,
    WorkflowError,
    WorkflowNotFoundError,
)
from dbos_async.handle import WorkflowHandle
from dbos_async.models import AppVersion, StepInfo, WorkflowStatus, WorkflowStatusString
from dbos_async.queue import Queue

__all__ = [
    "DBOS",
    "AppVersion",
    "DBOSClient",
    "DBOSError",
    "DatabaseUnavailableError",
    "MaxRecoveryAttemptsExceededError",
    "MaxStepRetriesExceeded",
    "NonDeterministicWorkflowError",
    "NotInWorkflowError",
    "Queue",
    "QueueDeduplicatedError",
    "SerializationError",
    "SetEnqueueOptions",
    "SetWorkflowID",
    "SetWorkflowTimeout",
    "StepInfo",
    "WorkflowCancelledError",
    "WorkflowConflictError",
    "WorkflowError",
    "WorkflowHandle",
    "WorkflowNotFoundError",
    "WorkflowStatus",
    "WorkflowStatusString",
]

# Reprs and docs show the public path, not the internal module.
for _name in __all__:
    _obj = globals()[_name]
    if getattr(_obj, "__module__", "").startswith("dbos_async."):
        _obj.__module__ = "dbos_async"
del _name, _obj
