"""Replay-safe values: ``DBOS.now()``, ``DBOS.random()`` and ``DBOS.uuid4()``.

Inside a workflow each is a checkpoint: the first execution records the
value, and replay returns it, so code that branches on the time or on a
random draw takes the same path again. Outside a workflow (or inside a step)
they just return a fresh value. One round trip each, none on replay.
"""

from __future__ import annotations

import random as _random
import uuid
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from typing import Any, TypeVar

from dbos_async import checkpoint, serialization
from dbos_async.context import current_workflow

T = TypeVar("T")

NOW_STEP = "DBOS.now"
RANDOM_STEP = "DBOS.random"
UUID4_STEP = "DBOS.uuid4"


def now() -> Coroutine[Any, Any, datetime]:
    """The current time as a timezone-aware UTC datetime; recorded inside a workflow."""
    return _value(NOW_STEP, _now, datetime)


def random() -> Coroutine[Any, Any, float]:
    """A float in [0, 1); recorded inside a workflow."""
    return _value(RANDOM_STEP, _random.random, float)


def uuid4() -> Coroutine[Any, Any, uuid.UUID]:
    """A random UUID; recorded inside a workflow."""
    return _value(UUID4_STEP, uuid.uuid4, uuid.UUID)


def _now() -> datetime:
    # The workflow's runtime's clock (a step's too): virtual in a TestEnvironment.
    ctx = current_workflow.get()
    return ctx.runtime.clock.now() if ctx is not None else datetime.now(UTC)


def _value(name: str, make: Callable[[], T], kind: type[T]) -> Coroutine[Any, Any, T]:
    call = checkpoint.take(name)  # at call time, like every checkpoint's identity
    if call is None:
        return _fresh(make)
    return _recorded(call, make, kind)


async def _fresh(make: Callable[[], T]) -> T:
    return make()


async def _recorded(call: checkpoint.Call, make: Callable[[], T], kind: type[T]) -> T:
    with call:
        found = await checkpoint.replay(call) if call.recorded is not None else None
        if found is None:
            value = make()
            found = await checkpoint.record(call, output=serialization.encode(value))
            if found is None:
                return value
        recorded: T = serialization.decode(found.output, kind)
        return recorded
