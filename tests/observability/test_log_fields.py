"""Log records name their workflow: ``DBOS.logger`` and the runtime's own loggers."""

from __future__ import annotations

import io
import json
import logging
import sys
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from dbos_async import DBOS, SetWorkflowID
from dbos_async.observers import Observer, StepEvent

FIELDS = ("workflow_id", "step_id", "app_version")

# -- the formatter the README shows -----------------------------------------------------


class JSONLineFormatter(logging.Formatter):
    """One JSON object per record, with the workflow's fields when it has them."""

    def format(self, record: logging.LogRecord) -> str:
        line = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for field in ("workflow_id", "step_id", "app_version"):
            if hasattr(record, field):
                line[field] = getattr(record, field)
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line)


# -- the application --------------------------------------------------------------------

failures: dict[str, int] = {}


@DBOS.step()
async def charge(amount: int) -> int:
    DBOS.logger.info("charging %d", amount)
    return amount


@DBOS.step()
def charge_in_a_thread(amount: int) -> int:
    DBOS.logger.info("charging %d in a thread", amount)
    return amount


@DBOS.step(retries_allowed=True, max_attempts=2, interval_seconds=0.01)
async def flaky_charge(key: str) -> str:
    if failures.get(key, 0) > 0:
        failures[key] -= 1
        raise ConnectionError("the payment API refused")
    return key


@DBOS.workflow()
async def checkout(amount: int) -> int:
    DBOS.logger.info("checking out")
    charged = await charge(amount)
    charged += await charge_in_a_thread(amount)
    DBOS.logger.info("checked out", extra={"workflow_id": "given-by-the-caller"})
    return charged


@DBOS.workflow()
async def retried_checkout(key: str) -> str:
    return await flaky_charge(key)


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.INFO, logger="dbos_async")
    return caplog


def by_message(records: list[logging.LogRecord], message: str) -> logging.LogRecord:
    [found] = [r for r in records if r.getMessage() == message]
    return found


def fields(record: logging.LogRecord) -> dict[str, object]:
    return {f: getattr(record, f) for f in FIELDS if hasattr(record, f)}


# -- DBOS.logger ------------------------------------------------------------------------


async def test_app_records_carry_the_workflow_and_in_a_step_the_step(
    db_url: str, logs: pytest.LogCaptureFixture
) -> None:
    async with DBOS(database_url=db_url, app_version="test"):
        DBOS.logger.info("before any workflow")
        with SetWorkflowID("checkout-1"):
            assert await checkout(5) == 10
        DBOS.logger.info("after the workflow")
    assert DBOS.logger.name == "dbos_async.app"
    in_workflow = by_message(logs.records, "checking out")
    assert fields(in_workflow) == {"workflow_id": "checkout-1", "app_version": "test"}
    in_step = by_message(logs.records, "charging 5")
    assert fields(in_step) == {"workflow_id": "checkout-1", "step_id": 0, "app_version": "test"}
    # A sync step's body runs in a worker thread: its records say the same.
    in_thread = by_message(logs.records, "charging 5 in a thread")
    assert fields(in_thread) == {"workflow_id": "checkout-1", "step_id": 1, "app_version": "test"}
    # What the caller passes in `extra` stands.
    given = by_message(logs.records, "checked out")
    assert given.workflow_id == "given-by-the-caller"  # type: ignore[attr-defined]
    assert given.app_version == "test" and not hasattr(given, "step_id")  # type: ignore[attr-defined]
    # Outside a workflow: none of the fields.
    for message in ("before any workflow", "after the workflow"):
        assert fields(by_message(logs.records, message)) == {}


# -- the runtime's own loggers ----------------------------------------------------------


async def test_the_runtimes_own_records_carry_the_workflow(
    db_url: str, logs: pytest.LogCaptureFixture
) -> None:
    failures["once"] = 1
    async with DBOS(database_url=db_url, app_version="test"):
        with SetWorkflowID("retried-checkout-1"):
            assert await retried_checkout("once") == "once"
    [retry] = [r for r in logs.records if getattr(r, "action", "") == "step_retry"]
    assert (retry.name, retry.levelno) == ("dbos_async.step", logging.WARNING)
    assert fields(retry) == {
        "workflow_id": "retried-checkout-1",
        "step_id": 0,
        "app_version": "test",
    }
    # The launch line is no workflow's.
    launched = [r for r in logs.records if r.getMessage().startswith("DBOS runtime launched")]
    assert launched and all(fields(r) == {} for r in launched)


class FailsInSteps(Observer):
    def step_started(self, step: StepEvent, attempt: int) -> None:
        raise RuntimeError("observer bug")


async def test_a_runtime_record_that_names_no_workflow_gets_it_from_the_context(
    db_url: str, logs: pytest.LogCaptureFixture
) -> None:
    async with DBOS(database_url=db_url, app_version="test", observers=[FailsInSteps()]):
        with SetWorkflowID("checkout-2"):
            assert await checkout(1) == 2
    # observers.notify logs the failure with no `extra`: the filter adds the fields.
    logged = [r for r in logs.records if r.name == "dbos_async.observers"]
    assert [fields(r) for r in logged] == [
        {"workflow_id": "checkout-2", "step_id": 0, "app_version": "test"},
        {"workflow_id": "checkout-2", "step_id": 1, "app_version": "test"},
    ]


# -- JSON lines -------------------------------------------------------------------------


@pytest.fixture
def json_lines() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JSONLineFormatter())
    logger = logging.getLogger("dbos_async")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield stream
    logger.removeHandler(handler)
    logger.setLevel(level)


async def test_a_json_formatter_prints_the_fields_as_json_lines(
    db_url: str, json_lines: io.StringIO
) -> None:
    failures["json"] = 1
    async with DBOS(database_url=db_url, app_version="test"):
        DBOS.logger.info("outside")
        with SetWorkflowID("checkout-3"):
            await checkout(7)
        with SetWorkflowID("retried-checkout-3"):
            await retried_checkout("json")
    lines = [json.loads(line) for line in json_lines.getvalue().splitlines()]
    assert all(isinstance(line, dict) for line in lines)
    assert all({"time", "level", "logger", "message"} <= line.keys() for line in lines)
    by_text = {line["message"]: line for line in lines}
    assert by_text["outside"] == {
        "time": by_text["outside"]["time"],
        "level": "INFO",
        "logger": "dbos_async.app",
        "message": "outside",
    }
    assert datetime.fromisoformat(by_text["outside"]["time"]).tzinfo is not None
    charging = by_text["charging 7"]
    assert (charging["workflow_id"], charging["step_id"], charging["app_version"]) == (
        "checkout-3",
        0,
        "test",
    )
    assert "step_id" not in by_text["checking out"]
    assert by_text["checking out"]["workflow_id"] == "checkout-3"
    [retry] = [line for line in lines if line["logger"] == "dbos_async.step"]
    assert (retry["level"], retry["workflow_id"], retry["step_id"]) == (
        "WARNING",
        "retried-checkout-3",
        0,
    )


def test_the_json_formatter_prints_an_exception_with_its_traceback() -> None:
    try:
        raise ValueError("bad input")
    except ValueError:
        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    line = json.loads(JSONLineFormatter().format(record))
    assert line["message"] == "failed" and "ValueError: bad input" in line["exception"]
    assert not {"workflow_id", "step_id", "app_version"} & line.keys()
