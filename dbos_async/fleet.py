"""Fleet failover: heartbeats, and adopting the PENDING workflows of gone instances.

Every runtime instance refreshes its heartbeat (its own row in ``instances``
and its executor's in ``executors``) every ``lease_seconds / 3``, and as
often adopts PENDING workflows of its app version, of any executor, whose
instance is gone: not heartbeat for ``lease_seconds``, or its advisory lock
free for a settle period (see recovery.py). Adoption bumps each workflow's
fence in the claiming statement, so exactly one runtime wins each workflow,
and every later checkpoint of the old owner (which carries the old fence)
writes nothing: a process that was only paused cannot corrupt the history
when it wakes up.

With an infinite lease nothing is adopted; the heartbeat still runs (every
``IDLE_HEARTBEAT_SECONDS``), so that the instance's row is not taken for a
long-dead one's.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import anyio
from anyio.abc import TaskStatus

from dbos_async import versions
from dbos_async.clock import Wake
from dbos_async.logs import get_logger
from dbos_async.recovery import (
    LOCK_SETTLE_SECONDS,
    RECOVERY_BATCH,
    Suspects,
    claim_batch,
    proven_gone,
)
from dbos_async.systemdb import executors as executors_table
from dbos_async.systemdb.executors import Suspect

if TYPE_CHECKING:
    from dbos_async.runtime import Runtime

logger = get_logger(__name__)

IDLE_HEARTBEAT_SECONDS = 10.0
"""The heartbeat's period when the lease is infinite (nothing is adopted then)."""


def heartbeat_seconds(lease_seconds: float) -> float:
    """How often an instance with this lease heartbeats."""
    return IDLE_HEARTBEAT_SECONDS if math.isinf(lease_seconds) else lease_seconds / 3


async def heartbeat_and_adopt(
    runtime: Runtime, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED
) -> None:
    """Every lease/3 heartbeat and adopt orphans; runs until cancelled.

    The first heartbeat is the launch's (it registers the instance).
    """
    lease = runtime.config.lease_seconds
    adopting = not math.isinf(lease)
    task_status.started()
    suspects: Suspects = []
    seen_at = 0.0
    beats = 0
    while True:
        await runtime.clock.sleep(heartbeat_seconds(lease), Wake.UPKEEP)
        beats += 1
        try:
            await heartbeat(runtime)
            if beats % versions.STRANDING_CHECK_HEARTBEATS == 0:
                # After the heartbeat: a runtime woken from a long pause (a
                # suspended host, a jump of a virtual clock) would otherwise
                # count its own version as run by no live instance.
                await versions.check_stranded(runtime)
            if not adopting:
                continue
            ready: list[Suspect] = []
            # Suspects count once they have stayed lockless a settle period;
            # one whose process this host can see is gone counts at once.
            aged = runtime.clock.monotonic() - seen_at >= LOCK_SETTLE_SECONDS
            if aged or not suspects:
                ready = list(suspects) if aged else []
                async with runtime.connection() as conn:
                    suspects = await executors_table.select_lockless_instances(
                        conn, runtime.instance
                    )
                seen_at = runtime.clock.monotonic()
                ready += [s for s in suspects if proven_gone(s)]
            while await adopt_orphans(runtime, ready) == RECOVERY_BATCH:
                pass
        except Exception as exc:  # a lost database (or a bug) must not stop the runtime
            runtime.reconciler.request()  # an adoption may have committed
            logger.warning("heartbeat failed: %r", exc, extra={"action": "heartbeat"})


async def heartbeat(runtime: Runtime) -> None:
    """Record that this instance, its executor and its version are alive. One round trip."""
    async with runtime.connection() as conn:
        runtime.latest_version = await executors_table.upsert_heartbeat(
            conn, runtime.instance, runtime.clock.sql_now_ms()
        )


async def adopt_orphans(runtime: Runtime, suspects: Suspects) -> int:
    """Adopt one batch of orphaned workflows and run them here; returns how many were claimed."""
    claimed, _ = await claim_batch(runtime, suspects, only_executor=None)
    if claimed:
        logger.info(
            "adopted %d workflows of gone runtime instances",
            claimed,
            extra={"action": "adopt"},
        )
    return claimed
