"""Cron parsing (cronsim), tick IDs in UTC, and the decoration-time check."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from dbos_async import DBOS
from dbos_async.scheduler import check_cron, forget_schedule, next_tick, tick_workflow_id


def at(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)  # type: ignore[misc]


@pytest.mark.parametrize(
    ("cron", "after", "expected"),
    [
        ("*/5 * * * * *", at(2024, 1, 1, 0, 0, 5), at(2024, 1, 1, 0, 0, 10)),  # seconds first
        ("30 * * * * *", at(2024, 1, 1, 0, 0, 31), at(2024, 1, 1, 0, 1, 30)),
        ("*/5 * * * *", at(2024, 1, 1, 0, 0, 5), at(2024, 1, 1, 0, 5, 0)),  # 5 fields: minutes
        ("0 0 1 1 *", at(2024, 6, 1), at(2025, 1, 1)),
        ("0 9 * * MON", at(2024, 1, 1, 9, 0, 0), at(2024, 1, 8, 9, 0, 0)),  # strictly after
    ],
)
def test_next_tick(cron: str, after: datetime, expected: datetime) -> None:
    assert next_tick(cron, after) == expected


@pytest.mark.parametrize(
    "cron", ["", "* * * *", "* * * * * * *", "61 * * * * *", "* 24 * * *", "nonsense", "0 0 31 2 *"]
)
def test_invalid_expressions_raise(cron: str) -> None:
    with pytest.raises(ValueError):
        check_cron(cron)


def test_an_invalid_expression_raises_at_decoration() -> None:
    with pytest.raises(ValueError, match="invalid cron"):

        @DBOS.scheduled("61 * * * * *")
        @DBOS.workflow(name="unit.cron.bad")
        async def bad(scheduled_at: datetime, actual_at: datetime) -> None: ...


def test_scheduled_goes_above_a_workflow() -> None:
    @DBOS.step(name="unit.cron.step")
    async def a_step(scheduled_at: datetime, actual_at: datetime) -> None: ...

    with pytest.raises(TypeError):
        DBOS.scheduled("* * * * *")(a_step)
    forget_schedule("unit.cron.step")


def test_tick_ids_are_utc_so_local_time_changes_cannot_collide() -> None:
    # 01:30 happens twice in a fall-back night; in UTC the two are an hour apart.
    first = datetime(2024, 11, 3, 1, 30, tzinfo=timezone(timedelta(hours=-4)))
    second = datetime(2024, 11, 3, 1, 30, tzinfo=timezone(timedelta(hours=-5)))
    assert tick_workflow_id("s", first) == "sched-s-2024-11-03T05:30:00+00:00"
    assert tick_workflow_id("s", second) == "sched-s-2024-11-03T06:30:00+00:00"
    assert tick_workflow_id("s", first.astimezone(UTC)) == tick_workflow_id("s", first)


def test_ticks_are_computed_in_utc_whatever_the_input_zone() -> None:
    local = datetime(2024, 3, 10, 1, 59, 59, tzinfo=timezone(timedelta(hours=-5)))
    assert next_tick("0 * * * *", local) == at(2024, 3, 10, 7, 0, 0)
