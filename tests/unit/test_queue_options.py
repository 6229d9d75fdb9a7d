"""Queue and SetEnqueueOptions: every bad option raises where it is written."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from dbos_async import Queue, SetEnqueueOptions, SetWorkflowTimeout
from dbos_async.context import enqueue_options
from dbos_async.queue import forget_queue


@pytest.fixture
def name() -> Iterator[str]:
    queue_name = f"unit-{uuid.uuid4().hex[:8]}"
    yield queue_name
    forget_queue(queue_name)


def test_a_queue_registers_its_name_once(name: str) -> None:
    q = Queue(name, concurrency=3, worker_concurrency=2, limiter={"limit": 5, "period": 0.5})
    assert (q.concurrency, q.worker_concurrency) == (3, 2)
    assert q.limiter == {"limit": 5, "period": 0.5}
    with pytest.raises(ValueError, match="already declared"):
        Queue(name)


@pytest.mark.parametrize(
    "options",
    [
        {"concurrency": 0},
        {"concurrency": -1},
        {"concurrency": 1.5},
        {"concurrency": True},
        {"worker_concurrency": 0},
        {"concurrency": 2, "worker_concurrency": 3},
        {"limiter": {"limit": 5, "period": 0}},
        {"limiter": {"limit": 5, "period": -1.0}},
        {"limiter": {"limit": 5, "period": float("inf")}},
        {"limiter": {"limit": 0, "period": 1.0}},
        {"limiter": {"limit": 5}},
        {"limiter": {"limit": 5, "period": 1.0, "burst": 2}},
        # Beyond what the claim's int4 and millisecond columns hold.
        {"concurrency": 2**31},
        {"worker_concurrency": 2**31},
        {"limiter": {"limit": 2**31, "period": 1.0}},
        {"limiter": {"limit": 5, "period": 1e300}},
    ],
)
def test_bad_options_raise_at_construction_and_register_nothing(
    name: str, options: dict[str, Any]
) -> None:
    with pytest.raises(ValueError):
        Queue(name, **options)
    Queue(name)  # the name is still free


@pytest.mark.parametrize("bad", ["", "a\x00b", "_dbos_internal"])
def test_bad_or_reserved_names_raise(bad: str) -> None:
    with pytest.raises(ValueError):
        Queue(bad)


@pytest.mark.parametrize(
    "options",
    [
        {"priority": 2**31},
        {"priority": -(2**31) - 1},
        {"priority": 1.0},
        {"priority": True},
        {"delay_seconds": -1},
        {"delay_seconds": float("nan")},
        {"delay_seconds": 1e17},
        {"deduplication_id": ""},
        {"queue_partition_key": ""},
        {"app_version": "a\x00"},
    ],
)
def test_bad_enqueue_options_raise_at_the_with(options: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        SetEnqueueOptions(**options)


def test_enqueue_options_nest_and_reset() -> None:
    assert enqueue_options().deduplication_id is None
    with SetEnqueueOptions(deduplication_id="a", priority=3):
        assert (enqueue_options().deduplication_id, enqueue_options().priority) == ("a", 3)
        with SetEnqueueOptions(delay_seconds=1.5):
            assert enqueue_options().deduplication_id is None  # an inner block replaces
            assert enqueue_options().delay_seconds == 1.5
        assert enqueue_options().priority == 3
    assert enqueue_options().priority is None


@pytest.mark.parametrize("bad", [0, -1, float("nan"), float("inf"), 1e17])
def test_a_workflow_timeout_out_of_range_raises_at_the_with(bad: float) -> None:
    with pytest.raises(ValueError, match="timeout"):
        SetWorkflowTimeout(bad)
