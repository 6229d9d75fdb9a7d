"""Records returned by the management calls: WorkflowStatus and StepInfo."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any


class WorkflowStatusString(enum.StrEnum):
    """The states of a workflow; the strings are what the database stores."""

    ENQUEUED = "ENQUEUED"
    PENDING = "PENDING"
    SUCCESS = "SUCCESS"
    ERROR = "ERROR"
    CANCELLED = "CANCELLED"
    MAX_RECOVERY_ATTEMPTS_EXCEEDED = "MAX_RECOVERY_ATTEMPTS_EXCEEDED"

    @property
    def is_terminal(self) -> bool:
        """Whether the workflow has finished for good (until resumed)."""
        return self not in (WorkflowStatusString.ENQUEUED, WorkflowStatusString.PENDING)


@dataclass(slots=True)
class WorkflowStatus:
    """The recorded state of one workflow; times are epoch milliseconds."""

    workflow_id: str
    status: WorkflowStatusString
    name: str
    input: Any = None
    output: Any = None
    error: BaseException | None = None
    created_at: int | None = None
    updated_at: int | None = None
    queue_name: str | None = None
    executor_id: str | None = None
    app_version: str | None = None
    recovery_attempts: int = 0
    parent_workflow_id: str | None = None
    forked_from: str | None = None
    deduplication_id: str | None = None
    priority: int = 0
    timeout_ms: int | None = None
    deadline_epoch_ms: int | None = None


@dataclass(slots=True)
class StepInfo:
    """One recorded step of a workflow; times are epoch milliseconds.

    ``branch`` is where the call was made: ``""`` for the workflow's own
    sequence, else the position of the task that made it (``"0"`` is the
    first task the workflow created, ``"2.1"`` the second task created by the
    workflow's third). ``step_id`` is the call's order within its branch.
    ``attempts`` is how many times a step's body ran, its retries included
    (None for calls without a body of their own, such as ``DBOS.sleep``, and
    for steps recorded before 0.3).
    """

    step_id: int
    name: str
    output: Any = None
    error: BaseException | None = None
    child_workflow_id: str | None = None
    started_at: int | None = None
    completed_at: int | None = None
    branch: str = ""
    attempts: int | None = None


@dataclass(frozen=True, slots=True)
class AppVersion:
    """An application version, and the work waiting on it (see ``list_application_versions``).

    ``live_executors`` counts the runtime processes of this version that
    heartbeat within three of their periods; ``pending`` and ``enqueued``
    its PENDING and ENQUEUED workflows. A version with waiting work and no
    live runtime is stranded: nothing runs that work until a runtime of the
    version starts, or the work is adopted by another version. Times are
    epoch milliseconds (None: a version only named by workflows).
    """

    version: str
    is_latest: bool
    live_executors: int
    pending: int
    enqueued: int
    first_seen: int | None = None
    last_seen: int | None = None

    @property
    def stranded(self) -> int:
        """The workflows waiting on this version while no runtime of it runs."""
        return 0 if self.live_executors else self.pending + self.enqueued
