"""Steps: checkpoint once, retries with backoff, sync bodies in threads, durable sleep."""

from __future__ import annotations

import errno
import itertools
import logging
import math
import threading
import time
from collections.abc import Callable
from typing import Any

import asyncpg
import pytest

from dbos_async import (
    DBOS,
    MaxStepRetriesExceeded,
    SerializationError,
    SetWorkflowID,
    WorkflowStatusString,
)

attempts: list[float] = []


@DBOS.step(retries_allowed=True, max_attempts=4, interval_seconds=0.01, backoff_rate=3.0)
async def flaky(succeed_on: int) -> str:
    attempts.append(time.monotonic())
    if len(attempts) < succeed_on:
        raise ConnectionError(f"attempt {len(attempts)} failed")
    return f"ok after {len(attempts)}"


@DBOS.workflow()
async def uses_flaky(succeed_on: int) -> str:
    return await flaky(succeed_on)


async def test_retries_back_off_then_succeed(dbos: DBOS, conn: asyncpg.Connection) -> None:
    attempts.clear()
    with SetWorkflowID("flaky-ok"):
        assert await uses_flaky(3) == "ok after 3"
    gaps = [b - a for a, b in itertools.pairwise(attempts)]
    assert gaps[0] >= 0.01 and gaps[1] >= 0.03  # interval * backoff**k
    # Only the final outcome is checkpointed, once, with the runs it took.
    assert await conn.fetchval("SELECT count(*) FROM operation_outputs") == 1
    assert [s.attempts for s in await DBOS.list_workflow_steps("flaky-ok")] == [3]


async def test_retries_exhausted_raise_max_step_retries(dbos: DBOS) -> None:
    attempts.clear()
    with SetWorkflowID("flaky-bad"), pytest.raises(MaxStepRetriesExceeded) as info:
        await uses_flaky(99)
    assert len(attempts) == 4
    assert isinstance(info.value.last_error, ConnectionError)
    status = await DBOS.get_workflow_status("flaky-bad")
    assert status is not None and status.status is WorkflowStatusString.ERROR
    assert isinstance(status.error, MaxStepRetriesExceeded)
    assert isinstance(status.error.last_error, ConnectionError)
    assert [s.attempts for s in await DBOS.list_workflow_steps("flaky-bad")] == [4]


threads: list[str] = []


@DBOS.step()
def blocking_io(x: int) -> int:
    threads.append(threading.current_thread().name)
    time.sleep(0.01)  # a real blocking call: it must not run on the event loop
    assert DBOS.workflow_id == "sync-step"
    return x + 1


@DBOS.workflow()
async def uses_sync() -> int:
    return await blocking_io(1)


async def test_sync_steps_run_in_a_worker_thread(dbos: DBOS) -> None:
    threads.clear()
    with SetWorkflowID("sync-step"):
        assert await uses_sync() == 2
    assert threads and threads[0] != threading.main_thread().name


async def test_step_outside_a_workflow_just_runs(dbos: DBOS, conn: asyncpg.Connection) -> None:
    attempts.clear()
    assert await flaky(1) == "ok after 1"
    assert await conn.fetchval("SELECT count(*) FROM operation_outputs") == 0


@DBOS.step()
async def inner() -> str:
    return "inner"


@DBOS.step()
async def outer() -> str:
    return await inner() + "+outer"


@DBOS.workflow()
async def nested_steps() -> str:
    return await outer()


async def test_a_step_called_from_a_step_is_part_of_it(
    dbos: DBOS, conn: asyncpg.Connection
) -> None:
    with SetWorkflowID("nested"):
        assert await nested_steps() == "inner+outer"
    names = await conn.fetch("SELECT function_name FROM operation_outputs")
    assert [r[0] for r in names] == [outer.__dbos_entry__.name]  # type: ignore[attr-defined]


@DBOS.workflow()
async def naps(seconds: float) -> str:
    await DBOS.sleep(seconds)
    return "rested"


async def test_durable_sleep_records_its_wake_up_time(dbos: DBOS, conn: asyncpg.Connection) -> None:
    before = time.time()
    with SetWorkflowID("nap"):
        assert await naps(0.05) == "rested"
    assert time.time() - before >= 0.05
    row = await conn.fetchrow("SELECT function_name, output FROM operation_outputs")
    assert row["function_name"] == "DBOS.sleep"
    assert before + 0.05 <= float(row["output"]) <= time.time()


async def test_sleep_rejects_negative_seconds(dbos: DBOS) -> None:
    with pytest.raises(ValueError, match="seconds"):
        await DBOS.sleep(-1)


# -- errors and results that are hard to record --------------------------------------------

body_runs: list[str] = []


class StrFailsError(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no str for you")


def _cyclic() -> Exception:
    exc = ValueError("cyclic")
    loop: dict[str, Any] = {}
    loop["me"] = loop
    exc.loop = loop  # type: ignore[attr-defined]
    exc.me = exc  # type: ignore[attr-defined]
    return exc


HARD_TO_RECORD: dict[str, Callable[[], Exception]] = {
    "surrogate": lambda: ValueError("bad \ud800 input"),
    "cyclic": _cyclic,
    "str-fails": StrFailsError,
    "huge": lambda: ValueError("x" * 5_000_000),
}


@DBOS.step()
async def raises_hard_to_record(kind: str) -> None:
    body_runs.append(kind)
    raise HARD_TO_RECORD[kind]()


@DBOS.workflow()
async def fails_hard_to_record(kind: str) -> None:
    await raises_hard_to_record(kind)


@pytest.mark.parametrize("kind", list(HARD_TO_RECORD))
async def test_an_error_that_is_hard_to_record_ends_the_workflow_once(
    dbos: DBOS, caplog: pytest.LogCaptureFixture, kind: str
) -> None:
    body_runs.clear()
    expected = type(HARD_TO_RECORD[kind]())
    with caplog.at_level(logging.WARNING, logger="dbos_async.workflow"):
        with SetWorkflowID(f"hard-{kind}"):
            handle = await DBOS.start_workflow(fails_hard_to_record, kind)
        # Before the fix this never ended: the workflow replayed every second.
        with pytest.raises(expected):
            await handle.get_result(timeout=10)
    status = await handle.get_status()
    assert status.status is WorkflowStatusString.ERROR
    assert type(status.error) is expected
    notes = "".join(status.error.__notes__)
    assert "Recorded traceback" in notes and "raises_hard_to_record" in notes
    if kind == "surrogate":
        assert str(status.error) == "bad \\ud800 input"
    (step,) = await DBOS.list_workflow_steps(f"hard-{kind}")
    assert type(step.error) is expected
    assert body_runs == [kind]
    # A workflow that replays later logs why; this one ended.
    assert not [r for r in caplog.records if getattr(r, "action", None) == "replay_later"]


@DBOS.step()
async def measures() -> float:
    body_runs.append("measures")
    return math.nan


@DBOS.workflow()
async def measuring() -> str:
    try:
        await measures()
    except SerializationError as exc:
        return f"refused: {exc}"
    return "stored"


async def test_a_step_returning_nan_fails_with_a_recorded_serialization_error(dbos: DBOS) -> None:
    body_runs.clear()
    with SetWorkflowID("nan"):
        first = await measuring()
    assert first.startswith("refused: Cannot serialize the result of step") and "nan" in first
    (step,) = await DBOS.list_workflow_steps("nan")
    assert isinstance(step.error, SerializationError) and step.output is None
    # Replay raises the recorded error without running the body again.
    assert await (await DBOS.fork_workflow("nan", 1)).get_result(timeout=10) == first
    assert body_runs == ["measures"]


@DBOS.step()
async def opens(path: str) -> None:
    body_runs.append("opens")
    raise FileNotFoundError(errno.ENOENT, "No such file or directory", path)


@DBOS.workflow()
async def opening() -> list[Any]:
    try:
        await opens("missing.txt")
    except OSError as exc:
        return [type(exc).__name__, exc.errno, exc.strerror, exc.filename, str(exc)]
    return []


async def test_a_replayed_os_error_keeps_errno_and_filename(dbos: DBOS) -> None:
    body_runs.clear()
    with SetWorkflowID("enoent"):
        first = await opening()
    assert first[:4] == [
        "FileNotFoundError",
        errno.ENOENT,
        "No such file or directory",
        "missing.txt",
    ]
    assert await (await DBOS.fork_workflow("enoent", 1)).get_result(timeout=10) == first
    assert body_runs == ["opens"]


plain_runs: list[str] = []


@DBOS.step(retries_allowed=True, max_attempts=3, interval_seconds=0.01)
async def always_fails(where: str) -> None:
    plain_runs.append(where)
    raise LookupError(f"failed {where}")


@DBOS.step()
async def calls_always_fails() -> str:
    try:
        await always_fails("in a step")
    except LookupError as exc:
        return str(exc)
    return "no error"


@DBOS.workflow()
async def nests_a_retried_step() -> str:
    return await calls_always_fails()


async def test_a_retried_step_outside_a_workflow_runs_once_as_a_plain_call(
    dbos: DBOS, conn: asyncpg.Connection
) -> None:
    plain_runs.clear()
    # Outside any workflow: no retries, and its own error rather than MaxStepRetriesExceeded.
    with pytest.raises(LookupError, match="failed outside"):
        await always_fails("outside")
    assert plain_runs == ["outside"]
    # Inside a step body, a step is part of that step: a plain call too.
    with SetWorkflowID("nested-retries"):
        assert await nests_a_retried_step() == "failed in a step"
    assert plain_runs == ["outside", "in a step"]
    assert await conn.fetchval("SELECT count(*) FROM operation_outputs") == 1
