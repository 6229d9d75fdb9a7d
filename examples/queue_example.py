"""Queues and a cron schedule: thumbnails rendered at most 2 at once, 5 per second.

    python examples/queue_example.py     # DBOS_DATABASE_URL, else the embedded Postgres

Run it in two or three terminals at once: each enqueues the same 12 renders
under the same workflow IDs (so each is enqueued once), every process
dequeues from the queue, and the limits hold across all of them (each
process renders one at a time). A per-second schedule prints each tick once
across all processes. Run it again later and the recorded results return at
once; `--again` renders under fresh IDs.
"""

from __future__ import annotations

import asyncio
import os
import sys
import uuid
from datetime import datetime

from dbos_async import DBOS, Queue, SetEnqueueOptions, SetWorkflowID

renders = Queue(
    "renders",
    concurrency=2,  # across all processes
    worker_concurrency=1,  # per process
    limiter={"limit": 5, "period": 1.0},  # starts per second, across all processes
    priority_enabled=True,
)


@DBOS.step()
async def render(photo: str) -> str:
    await asyncio.sleep(0.3)  # the expensive part
    return f"thumb-{photo}"


@DBOS.workflow()
async def thumbnail(photo: str) -> str:
    thumb = await render(photo)
    print(f"{os.getpid()}: {photo} -> {thumb}", flush=True)
    return thumb


@DBOS.scheduled("*/1 * * * * *")  # seconds first: every second
@DBOS.workflow()
async def progress(scheduled_at: datetime, actual_at: datetime) -> None:
    late_ms = (actual_at - scheduled_at).total_seconds() * 1000
    print(f"{os.getpid()}: tick {scheduled_at:%H:%M:%S} (started {late_ms:.0f} ms late)")


async def main() -> None:
    async with DBOS(app_name="queue-example"):
        run = uuid.uuid4().hex[:6] if "--again" in sys.argv else "first"
        handles = []
        for i in range(12):
            # Lower priority runs first; the workflow ID makes the enqueue idempotent.
            with (
                SetEnqueueOptions(priority=0 if i % 4 == 0 else 1),
                SetWorkflowID(f"thumb-{run}-{i}"),
            ):
                handles.append(await renders.enqueue(thumbnail, f"photo-{i}.jpg"))
        results = await asyncio.gather(*(h.get_result() for h in handles))
        print(f"{os.getpid()}: done, {len(results)} thumbnails")


if __name__ == "__main__":
    asyncio.run(main())
