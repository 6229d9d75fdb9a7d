"""Patching: ``DBOS.patch(name)`` and ``DBOS.deprecate_patch(name)``.

New code recovers old work only if it runs under the same app version, so
patching needs ``DBOS(..., enable_patching=True)``, which pins the version
(``"PATCHING_ENABLED"`` unless one is given). A change to a workflow then goes
behind ``if await DBOS.patch(name):``. A patch is a durable call like any other:
at its position in the branch it is made in, it records a marker,
``"DBOS.patch-<name>"`` with no output. What is recorded there decides:

- the marker: an execution that took the new path there: True;
- another call: an execution that predates the patch, whose next call is
  the one recorded there: False, and the patch does not take the position,
  so that call replays where it was recorded;
- nothing: an execution that is new, or had not got that far: the marker is
  recorded (one round trip, group-committed), and True.

Positions are per branch (see ``checkpoint.py``), so patches inside
concurrent branches decide each branch on its own history.
"""

from __future__ import annotations

from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

from dbos_async import checkpoint
from dbos_async.errors import DBOSError, NotInWorkflowError
from dbos_async.validation import check_identifier

if TYPE_CHECKING:
    from dbos_async.systemdb.steps import StepRecord

PATCH_PREFIX = "DBOS.patch-"
"""A patch's marker is recorded as ``PATCH_PREFIX + name``."""

PATCHING_ENABLED = "PATCHING_ENABLED"
"""The app version of ``DBOS(..., enable_patching=True)`` when none is given."""


def patch(name: str) -> Coroutine[Any, Any, bool]:
    """Whether this execution takes the new path of patch ``name``.

    Returns:
        True where the execution recorded this patch here, or had recorded
        nothing here yet (then the marker is recorded now); False where it
        recorded another call here, which the next durable call replays.

    Raises:
        NotInWorkflowError: called outside workflow code (or inside a step).
        DBOSError: the runtime was made without ``enable_patching=True``.
        ValueError: ``name`` is not a non-empty string.
    """
    marker, found = _look("patch", name)
    if found is not None and found.function_name != marker:
        return _answer(False)  # an older history: its own call keeps the position
    call = checkpoint.take(marker)  # now, before any await: the position of a durable call
    assert call is not None
    return _marked(call)


def deprecate_patch(name: str) -> Coroutine[Any, Any, bool]:
    """Step over patch ``name``'s marker where one is recorded; record nothing new.

    Goes where ``DBOS.patch(name)`` was, once no execution that predates the
    patch remains, with the patch's old path deleted. Executions that recorded
    the marker replay it here. Unlike ``patch``, it records no marker where
    nothing is recorded: executions that start after the deprecation then
    carry none, so the call can later be deleted without breaking them.

    Returns:
        True where the marker is recorded here (it is taken) or nothing is;
        False where another call is recorded here (an execution that started
        after the deprecation, or one that predates the patch), which keeps
        its position. The code after it is the same either way.

    Raises:
        NotInWorkflowError: called outside workflow code (or inside a step).
        DBOSError: the runtime was made without ``enable_patching=True``.
        ValueError: ``name`` is not a non-empty string.
    """
    marker, found = _look("deprecate_patch", name)
    if found is None or found.function_name != marker:
        return _answer(found is None)
    call = checkpoint.take(marker)
    assert call is not None
    return _marked(call)


def _look(what: str, name: str) -> tuple[str, StepRecord | None]:
    """The marker's name, and what is recorded where the next call of this branch goes."""
    marker = PATCH_PREFIX + check_identifier(name, "patch name")
    here = checkpoint.peek(marker)
    if here is None:
        raise NotInWorkflowError(
            f"DBOS.{what} is only available in workflow code (not outside a workflow, "
            "nor inside a step)"
        )
    ctx, found = here
    if not ctx.runtime.config.enable_patching:
        raise DBOSError(
            f"DBOS.{what} needs DBOS(..., enable_patching=True). Without it the app "
            "version is a hash of the workflow code, which changes with every edit, so "
            "new code would never recover the executions a patch keeps on their old path."
        )
    return marker, found


async def _answer(value: bool) -> bool:
    return value


async def _marked(call: checkpoint.Call) -> bool:
    with call:
        if call.recorded is not None:
            await checkpoint.replay(call)  # reads nothing
        else:
            # None, or an earlier execution's marker: another call there raises.
            await checkpoint.record(call)
        return True
