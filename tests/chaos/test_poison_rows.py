"""Rows whose recorded inputs cannot be decoded, next to good ones, on every path that runs rows.

Recovery at launch (PENDING rows of this executor), a queue claim (ENQUEUED
rows) and adoption (PENDING rows of an executor that never heartbeat) each
meet garbage written straight into ``workflow_status.inputs``. The good rows
must run, the bad ones end ERROR saying why, and the runtime keeps working.
"""

from __future__ import annotations

from typing import Any

import asyncpg
import pytest
from ledger import Observer, four_steps, problems, until

from dbos_async import DBOS, Queue, SetWorkflowID, serialization
from dbos_async.workflow import entry_of

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(120)]

poison_queue = Queue("chaos_poison", concurrency=3)

GARBAGE: dict[str, str | None] = {
    "text": "not json at all",
    "truncated": '{"args": [1',
    "scalar": "42",
    "null": None,
    "wrong-type": '{"args": ["eleven", 0.0], "kwargs": {}}',
    "wrong-arity": '{"args": [1, 0.0, 3, 4, 5], "kwargs": {}}',
}
PATHS = {
    "recover": ("PENDING", "local", None),
    "adopt": ("PENDING", "ghost", None),  # an executor with no heartbeat at all
    "queue": ("ENQUEUED", None, "chaos_poison"),
}


async def insert_row(
    conn: asyncpg.Connection, workflow_id: str, path: str, inputs: str | None
) -> None:
    status, executor, queue = PATHS[path]
    await conn.execute(
        "INSERT INTO dbos_async.workflow_status (workflow_id, status, name, inputs, app_name, "
        "app_version, executor_id, created_at, updated_at, queue_name, enqueue_seq, "
        "branched_steps) VALUES ($1, $2, $3, $4, 'app', 'chaos', $5, 0, 0, $6, "
        "CASE WHEN $6::text IS NULL THEN NULL ELSE nextval('dbos_async.workflow_enqueue_seq') END,"
        " true)",
        workflow_id,
        status,
        entry_of(four_steps).name,
        inputs,
        executor,
        queue,
    )


def good_inputs(i: int) -> str:
    return serialization.encode_inputs((i, 0.0), {}, entry_of(four_steps).name)


async def test_poison_rows_end_in_error_and_every_good_row_runs(
    app_db_url: str, ledger: Observer
) -> None:
    conn = await asyncpg.connect(app_db_url)
    good: dict[str, int] = {}
    bad: set[str] = set()
    try:
        for path in PATHS:
            for i in range(3):
                good[f"{path}-good-{i}"] = i + 6
                await insert_row(conn, f"{path}-good-{i}", path, good_inputs(i))
            for kind, inputs in GARBAGE.items():
                bad.add(f"{path}-bad-{kind}")
                await insert_row(conn, f"{path}-bad-{kind}", path, inputs)
        async with DBOS(database_url=app_db_url, app_version="chaos", lease_seconds=1.0) as dbos:
            # Poison arriving while it runs, announced like any enqueue.
            await insert_row(conn, "late-bad", "queue", "{{{")
            await insert_row(conn, "late-good", "queue", good_inputs(40))
            await conn.execute("SELECT pg_notify('dbos_async', 'q:chaos_poison')")
            bad.add("late-bad")
            good["late-good"] = 46

            async def settled() -> bool:
                left = await conn.fetchval(
                    "SELECT count(*) FROM dbos_async.workflow_status "
                    "WHERE status IN ('PENDING', 'ENQUEUED')"
                )
                return bool(left == 0)

            await until(settled, "every row ran or failed")
            with SetWorkflowID("after-the-poison"):  # the runtime still works
                assert await dbos.start_workflow(four_steps, 1) is not None
            assert await (await dbos.retrieve_workflow("after-the-poison")).get_result(10) == 7
        rows = {
            r["workflow_id"]: r
            for r in await conn.fetch(
                "SELECT workflow_id, status, output, error FROM dbos_async.workflow_status"
            )
        }
    finally:
        await conn.close()
    results: dict[str, Any] = {w: (rows[w]["status"], rows[w]["output"]) for w in good}
    assert results == {w: ("SUCCESS", str(v)) for w, v in good.items()}
    assert {w: rows[w]["status"] for w in bad} == dict.fromkeys(bad, "ERROR")
    assert all(rows[w]["error"] for w in bad)
    # Well-formed JSON that does not fit the signature is decoded leniently
    # (serialization.decode returns a value that no longer matches its
    # annotation as it is): the workflow runs and fails on its own error.
    undecodable = [w for w in bad if "wrong-" not in w]
    assert [w for w in undecodable if "do not decode" not in rows[w]["error"]] == []
    assert await problems(ledger, [*good, "after-the-poison"]) == []
