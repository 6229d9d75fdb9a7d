"""Two runtimes sharing a database, one on a host whose clock runs 10 s behind.

Heartbeats and adoption read the database's clock, so the other runtime
must never take the slow host's live workflows for orphans (nor the other
way round), no step may run twice, and the shared queue's limit holds.
"""

from __future__ import annotations

import pytest
from ledger import Observer, problems, until
from procs import apps, launch

from dbos_async import DBOSClient

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(120)]

COUNT, TASKS, QUEUE_LIMIT = 10, 12, 2


async def queue_overlap(ledger: Observer) -> int:
    """Most queued task bodies running at once, by the database's clock."""
    rows = await ledger.fetch(
        "SELECT s.at AS began, e.at AS ended FROM public.ledger s "
        "JOIN public.ledger e ON e.workflow_id = s.workflow_id AND e.step = 'q-end' "
        "WHERE s.step = 'q-start'"
    )
    events = sorted([(r["began"], 1) for r in rows] + [(r["ended"], -1) for r in rows])
    now = most = 0
    for _, change in events:
        now += change
        most = max(most, now)
    return most


async def test_a_host_10s_behind_keeps_its_workflows_and_nothing_runs_twice(
    app_db_url: str, ledger: Observer
) -> None:
    async with apps() as running:
        slow = await launch(running, "skew_app.py", "slow", app_db_url, str(COUNT), SKEW="-10")
        fast = await launch(running, "skew_app.py", "fast", app_db_url, str(COUNT))
        await slow.wait_for("started")
        await fast.wait_for("started")
        async with DBOSClient(app_db_url) as client:
            for i in range(TASKS):
                await client.enqueue(
                    i, queue_name="chaos_skew", workflow_name="skew.task", workflow_id=f"task-{i}"
                )

        async def finished() -> bool:
            left = await ledger.fetchval(
                "SELECT count(*) FROM dbos_async.workflow_status "
                "WHERE status IN ('PENDING', 'ENQUEUED')"
            )
            return bool(left == 0)

        # Leases are 1.5 s: the runtimes look for orphans every 0.5 s meanwhile.
        await until(finished, "every workflow finished", within=60)
    assert await problems(ledger) == []
    rows = await ledger.fetch(
        "SELECT workflow_id, executor_id, fence, recovery_attempts FROM dbos_async.workflow_status "
        "WHERE workflow_id LIKE 'sk-%'"
    )
    assert len(rows) == 2 * COUNT
    for row in rows:
        owner = row["workflow_id"].split("-")[1]
        assert (row["executor_id"], row["fence"], row["recovery_attempts"]) == (owner, 0, 0), row
    strangers = await ledger.fetch(
        "SELECT workflow_id, executor FROM public.ledger "
        "WHERE workflow_id LIKE 'sk-%' AND executor <> split_part(workflow_id, '-', 2)"
    )
    assert strangers == []
    assert await queue_overlap(ledger) <= QUEUE_LIMIT


async def final_status(ledger: Observer, workflow_id: str) -> str:
    async def final() -> bool:
        status = await ledger.fetchval(
            "SELECT status FROM dbos_async.workflow_status WHERE workflow_id = $1", workflow_id
        )
        return status not in (None, "PENDING", "ENQUEUED")

    await until(final, f"{workflow_id} finished", within=30)
    return str(
        await ledger.fetchval(
            "SELECT status FROM dbos_async.workflow_status WHERE workflow_id = $1", workflow_id
        )
    )


async def test_a_host_on_time_cancels_a_queued_workflow_at_its_timeout(
    app_db_url: str, ledger: Observer
) -> None:
    async with apps() as running:
        on_time = await launch(running, "skew_app.py", "ontime", app_db_url, "0", TIMED="1")
        await on_time.wait_for("started")
        assert await final_status(ledger, "timed-ontime") == "CANCELLED"


async def test_a_host_10s_behind_cancels_a_queued_workflow_at_its_timeout(
    app_db_url: str, ledger: Observer
) -> None:
    async with apps() as running:
        slow = await launch(running, "skew_app.py", "slow", app_db_url, "0", SKEW="-10", TIMED="1")
        await slow.wait_for("started")
        status = await final_status(ledger, "timed-slow")
        steps = await ledger.fetch(
            "SELECT step FROM public.ledger WHERE workflow_id = 'timed-slow' ORDER BY at"
        )
        print(f"timed-slow ended {status} after steps {[r[0] for r in steps]}")
        assert status == "CANCELLED"
