"""Logs a person can follow (issue 19, item 4): retries, errors, and the launch line."""

from __future__ import annotations

import asyncio
import logging
import sys

import pytest

from dbos_async import DBOS, MaxStepRetriesExceeded, SetWorkflowID

attempts: list[int] = []


@DBOS.step(retries_allowed=True, max_attempts=3, interval_seconds=0.01)
async def flaky() -> str:
    attempts.append(len(attempts) + 1)
    if len(attempts) < 3:
        raise ConnectionRefusedError(f"the payment API refused attempt {len(attempts)}")
    return "paid"


@DBOS.workflow()
async def pays() -> str:
    return await flaky()


@DBOS.step(retries_allowed=True, max_attempts=2, interval_seconds=0.01)
async def always_fails() -> None:
    raise LookupError("no such order")


@DBOS.workflow()
async def fails() -> None:
    await always_fails()


async def test_each_step_retry_is_a_warning_naming_the_attempt_and_the_error(
    dbos: DBOS, caplog: pytest.LogCaptureFixture
) -> None:
    attempts.clear()
    with caplog.at_level(logging.WARNING, logger="dbos_async"), SetWorkflowID("retried"):
        assert await pays() == "paid"
    retries = [r for r in caplog.records if getattr(r, "action", "") == "step_retry"]
    assert [r.levelno for r in retries] == [logging.WARNING, logging.WARNING]
    assert "attempt 1 of 3" in retries[0].getMessage()
    assert "refused attempt 2" in retries[1].getMessage() and "retried" in retries[1].getMessage()


async def test_a_workflow_that_ends_in_error_is_an_error_in_the_log(
    dbos: DBOS, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="dbos_async"), SetWorkflowID("failed"):
        with pytest.raises(MaxStepRetriesExceeded):
            await fails()
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "failed" in errors[0].getMessage(), errors
    assert "ERROR" in errors[0].getMessage()


async def test_the_launch_line_shows_when_the_app_configured_no_logging(db_url: str) -> None:
    # As under uvicorn's default setup: only the server's own loggers have handlers.
    script = (
        "import asyncio, logging\n"
        "from dbos_async import DBOS\n"
        "logging.getLogger('uvicorn').addHandler(logging.StreamHandler())\n"
        "async def main():\n"
        f"    async with DBOS(database_url={db_url!r}, app_version='logs'):\n"
        "        pass\n"
        "asyncio.run(main())\n"
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", script, stderr=asyncio.subprocess.PIPE
    )
    err = (await proc.communicate())[1].decode()
    assert proc.returncode == 0, err
    assert "INFO dbos_async.runtime: DBOS runtime launched (executor local, app version logs" in (
        err
    ), err
