"""PrometheusMetrics: what each metric counts, read back from a registry of the test's own."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import asyncpg
import httpx
import pytest
from prometheus_client import CollectorRegistry

from dbos_async import DBOS, Queue, SetWorkflowID, WorkflowCancelledError
from dbos_async.contrib.prometheus import PrometheusMetrics, metrics_asgi_app
from dbos_async.queue import forget_queue

# -- the application --------------------------------------------------------------------

failures: dict[str, int] = {}  # failed attempts left, per key


class Signals:
    """Set by workflow code; new for each test (an asyncio.Event keeps its first loop)."""

    asleep: asyncio.Event  # napper is about to sleep


signals = Signals()


@pytest.fixture(autouse=True)
def fresh_signals() -> None:
    signals.asleep = asyncio.Event()


@DBOS.step()
async def add_one(x: int) -> int:
    return x + 1


@DBOS.step(retries_allowed=True, max_attempts=3, interval_seconds=0.01)
async def flaky(key: str) -> str:
    if failures.get(key, 0) > 0:
        failures[key] -= 1
        raise ConnectionError(f"attempt failed ({key})")
    return key


@DBOS.step()
async def broken() -> None:
    raise LookupError("no such order")


@DBOS.transaction()
async def select_one() -> int:
    value: int = await DBOS.connection.fetchval("SELECT 1")
    return value


@DBOS.step()
async def slow_step(seconds: float) -> str:
    await asyncio.sleep(seconds)  # not durable: a body that takes long
    return "done"


@DBOS.workflow()
async def in_a_slow_step(seconds: float) -> str:
    signals.asleep.set()
    return await slow_step(seconds)


@DBOS.workflow()
async def plain(x: int) -> int:
    return await add_one(x)


@DBOS.workflow()
async def with_retries(key: str) -> str:
    return await flaky(key)


@DBOS.workflow()
async def failing() -> None:
    await broken()


@DBOS.workflow()
async def transactional() -> int:
    return await select_one()


@DBOS.workflow()
async def napper(seconds: float) -> str:
    signals.asleep.set()
    await DBOS.sleep(seconds)
    return "rested"


def name_of(fn: Callable[..., object]) -> str:
    """The registered name: the ``workflow`` or ``step`` label's value."""
    name: str = fn.__dbos_entry__.name  # type: ignore[attr-defined]
    return name


# -- fixtures ---------------------------------------------------------------------------


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def queue() -> Iterator[Queue]:
    declared = Queue(f"prom-{uuid.uuid4().hex[:8]}")
    yield declared
    forget_queue(declared.name)


def runtime(db_url: str, metrics: PrometheusMetrics, **options: object) -> DBOS:
    return DBOS(database_url=db_url, app_version="test", observers=[metrics], **options)  # type: ignore[arg-type]


# -- executions -------------------------------------------------------------------------


async def test_a_start_and_a_dequeue_are_counted_with_their_queue(
    db_url: str, registry: CollectorRegistry, queue: Queue
) -> None:
    value = registry.get_sample_value
    wf = name_of(plain)
    async with runtime(db_url, PrometheusMetrics(registry)) as dbos:
        assert await plain(1) == 2
        started = await dbos.start_workflow(plain, 2)
        assert await started.get_result() == 3
        enqueued = await queue.enqueue(plain, 3)
        assert await enqueued.get_result(timeout=10) == 4
        assert value("dbos_workflows_started_total", {"workflow": wf, "queue": ""}) == 2
        assert value("dbos_workflows_started_total", {"workflow": wf, "queue": queue.name}) == 1
        assert value("dbos_queue_wait_seconds_count", {"queue": queue.name}) == 1
        waited = value("dbos_queue_wait_seconds_sum", {"queue": queue.name})
        assert waited is not None and 0 <= waited < 10
        assert value("dbos_queue_wait_seconds_count", {"queue": ""}) is None  # started directly
        assert value("dbos_workflows_finished_total", {"workflow": wf, "status": "SUCCESS"}) == 3
        assert (
            value("dbos_workflow_duration_seconds_count", {"workflow": wf, "status": "SUCCESS"})
            == 3
        )
        assert value("dbos_workflows_in_flight", {"workflow": wf}) == 0


async def test_each_way_an_execution_ends_is_counted_and_timed(
    db_url: str, registry: CollectorRegistry
) -> None:
    value = registry.get_sample_value
    async with runtime(db_url, PrometheusMetrics(registry)) as dbos:
        assert await plain(1) == 2
        with pytest.raises(LookupError):
            await failing()
        sleeping = await dbos.start_workflow(napper, 60.0)
        await signals.asleep.wait()
        await dbos.cancel_workflow(sleeping.workflow_id)
        with pytest.raises(WorkflowCancelledError):
            await sleeping.get_result(timeout=10)
        for fn, status in ((plain, "SUCCESS"), (failing, "ERROR"), (napper, "CANCELLED")):
            labels = {"workflow": name_of(fn), "status": status}
            assert value("dbos_workflows_finished_total", labels) == 1, labels
            assert value("dbos_workflow_duration_seconds_count", labels) == 1, labels
            assert value("dbos_workflows_in_flight", {"workflow": name_of(fn)}) == 0
        # Each execution ended one way only.
        other = {"workflow": name_of(napper), "status": "SUCCESS"}
        assert value("dbos_workflows_finished_total", other) is None
        # The cancelled one slept until it was cancelled: its duration says so, in seconds.
        took = value(
            "dbos_workflow_duration_seconds_sum",
            {"workflow": name_of(napper), "status": "CANCELLED"},
        )
        assert took is not None and 0 < took < 10


async def test_in_flight_counts_a_sleeping_workflow_until_it_ends(
    db_url: str, registry: CollectorRegistry
) -> None:
    labels = {"workflow": name_of(napper)}
    metrics = PrometheusMetrics(registry)
    async with runtime(db_url, metrics) as dbos:
        handle = await dbos.start_workflow(napper, 0.3)
        await signals.asleep.wait()
        assert registry.get_sample_value("dbos_workflows_in_flight", labels) == 1
        assert await handle.get_result(timeout=10) == "rested"
        assert registry.get_sample_value("dbos_workflows_in_flight", labels) == 0
        assert metrics._began == {}


# -- steps ------------------------------------------------------------------------------


async def test_steps_are_timed_by_outcome_and_their_retries_counted(
    db_url: str, registry: CollectorRegistry
) -> None:
    value = registry.get_sample_value
    async with runtime(db_url, PrometheusMetrics(registry)):
        failures["twice"] = 2
        assert await with_retries("twice") == "twice"
        assert await with_retries("at-once") == "at-once"
        with pytest.raises(LookupError):
            await failing()
        assert await transactional() == 1
    step = name_of(flaky)
    assert value("dbos_step_retries_total", {"step": step}) == 2
    # One observation per step call, its retries included.
    assert value("dbos_step_duration_seconds_count", {"step": step, "status": "SUCCESS"}) == 2
    retried = value("dbos_step_duration_seconds_sum", {"step": step, "status": "SUCCESS"})
    assert retried is not None and retried >= 0.01 + 0.02  # the two waits between attempts
    failed = {"step": name_of(broken), "status": "ERROR"}
    assert value("dbos_step_duration_seconds_count", failed) == 1
    assert value("dbos_step_retries_total", {"step": name_of(broken)}) is None
    # A transaction is timed like a step.
    txn = {"step": name_of(select_one), "status": "SUCCESS"}
    assert value("dbos_step_duration_seconds_count", txn) == 1


async def test_a_step_cut_short_by_a_cancel_is_timed_as_cancelled(
    db_url: str, registry: CollectorRegistry
) -> None:
    metrics = PrometheusMetrics(registry)
    async with runtime(db_url, metrics) as dbos:
        handle = await dbos.start_workflow(in_a_slow_step, 60.0)
        await signals.asleep.wait()
        await asyncio.sleep(0.05)  # into the step's body
        await dbos.cancel_workflow(handle.workflow_id)
        with pytest.raises(WorkflowCancelledError):
            await handle.get_result(timeout=10)
    labels = {"step": name_of(slow_step), "status": "CANCELLED"}
    assert registry.get_sample_value("dbos_step_duration_seconds_count", labels) == 1
    # Nothing kept per execution or per step once they ended.
    assert metrics._began == {} and metrics._steps == {}


# -- recovery ---------------------------------------------------------------------------


async def test_a_recovered_execution_is_counted_by_the_runtime_that_recovers_it(
    db_url: str,
) -> None:
    first, second = CollectorRegistry(), CollectorRegistry()
    wf = {"workflow": name_of(napper)}
    async with runtime(db_url, PrometheusMetrics(first)) as dbos:
        handle = await dbos.start_workflow(napper, 0.5)
        await signals.asleep.wait()
    # A clean shutdown stopped it PENDING: no outcome here, nothing left in flight.
    assert first.get_sample_value("dbos_workflows_finished_total", {**wf, "status": "STOPPED"}) == 1
    assert first.get_sample_value("dbos_workflows_in_flight", wf) == 0
    assert first.get_sample_value("dbos_workflow_recoveries_total", wf) is None
    # A runtime of the same executor ID recovers it at launch.
    async with runtime(db_url, PrometheusMetrics(second)) as dbos:
        recovered = await dbos.retrieve_workflow(handle.workflow_id)
        assert await recovered.get_result(timeout=10) == "rested"
        assert second.get_sample_value("dbos_workflow_recoveries_total", wf) == 1
        # A recovery is no start: the started counter counts starts and dequeues only.
        assert second.get_sample_value("dbos_workflows_started_total", {**wf, "queue": ""}) is None
        success = {**wf, "status": "SUCCESS"}
        assert second.get_sample_value("dbos_workflows_finished_total", success) == 1
        assert second.get_sample_value("dbos_workflows_in_flight", wf) == 0


# -- labels -----------------------------------------------------------------------------


async def test_no_label_holds_a_workflow_id(
    db_url: str, registry: CollectorRegistry, queue: Queue
) -> None:
    ids: list[str] = []
    async with runtime(db_url, PrometheusMetrics(registry)) as dbos:
        with SetWorkflowID("wfid-chosen-by-the-caller"):
            await plain(1)
        ids.append("wfid-chosen-by-the-caller")
        for handle in (
            await dbos.start_workflow(plain, 2),
            await dbos.start_workflow(with_retries, "x"),
            await queue.enqueue(plain, 3),
        ):
            await handle.get_result(timeout=10)
            ids.append(handle.workflow_id)
        failures["once"] = 1
        handle = await dbos.start_workflow(with_retries, "once")
        await handle.get_result()
        ids.append(handle.workflow_id)
        with pytest.raises(LookupError):
            await failing()
    samples = [s for metric in registry.collect() for s in metric.samples]
    assert samples
    label_names = {name for s in samples for name in s.labels}
    assert label_names <= {"workflow", "queue", "status", "step", "le"}, label_names
    values = {v for s in samples for v in s.labels.values()}
    leaked = {v for v in values for workflow_id in ids if workflow_id in v}
    assert not leaked, leaked
    registered = {name_of(fn) for fn in (plain, with_retries, failing)}
    assert {s.labels["workflow"] for s in samples if "workflow" in s.labels} == registered


# -- fleet gauges -----------------------------------------------------------------------


async def _park(conn: asyncpg.Connection, workflow_id: str, status: str, **cols: object) -> None:
    """A workflow of app version "old", whose runtime is gone."""
    await conn.execute(
        "INSERT INTO workflow_status (workflow_id, status, name, inputs, app_version,"
        " executor_id, queue_name, enqueue_seq, created_at, updated_at, branched_steps)"
        " VALUES ($1, $2, $3, '{\"args\": [1], \"kwargs\": {}}', 'old', 'gone-executor', $4,"
        "  CASE WHEN $4::text IS NULL THEN NULL ELSE nextval('workflow_enqueue_seq') END,"
        "  $5, $5, true)",
        workflow_id,
        status,
        name_of(plain),
        cols.get("queue_name"),
        cols.get("created_at", int(time.time() * 1000)),
    )


class RefreshTold(PrometheusMetrics):
    """Sets ``refreshed`` after each refresh of the fleet gauges (the refresher's too)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        super().__init__(registry, fleet_gauges=True, refresh_seconds=3600)
        self.refreshed = asyncio.Event()

    async def refresh(self, runtime: Any) -> None:
        await super().refresh(runtime)
        self.refreshed.set()


async def test_fleet_gauges_read_queue_depths_ages_and_stranded_work(
    db_url: str, conn: asyncpg.Connection, registry: CollectorRegistry, queue: Queue
) -> None:
    value = registry.get_sample_value
    old_queue = "prom-old-queue"
    now_ms = int(time.time() * 1000)
    await _park(
        conn, "old-enqueued-1", "ENQUEUED", queue_name=old_queue, created_at=now_ms - 120_000
    )
    await _park(conn, "old-enqueued-2", "ENQUEUED", queue_name=old_queue, created_at=now_ms - 5_000)
    await _park(conn, "old-pending", "PENDING")
    await _park(conn, "old-finished", "SUCCESS", queue_name=old_queue)
    metrics = RefreshTold(registry)
    async with runtime(db_url, metrics) as dbos:
        # The refresher's first round, at launch, is over (the next is an hour away): what
        # follows is what the explicit refreshes read.
        await asyncio.wait_for(metrics.refreshed.wait(), 10)
        assert value("dbos_workflows_stranded", {"app_version": "old"}) == 3
        sleeping = await queue.enqueue(napper, 60.0)
        await asyncio.wait_for(signals.asleep.wait(), 10)
        await metrics.refresh(dbos._runtime)
        assert value("dbos_queue_depth", {"queue": old_queue, "status": "ENQUEUED"}) == 2
        assert value("dbos_queue_depth", {"queue": old_queue, "status": "PENDING"}) == 0
        assert value("dbos_queue_depth", {"queue": queue.name, "status": "PENDING"}) == 1
        assert value("dbos_queue_depth", {"queue": queue.name, "status": "ENQUEUED"}) == 0
        age = value("dbos_queue_oldest_age_seconds", {"queue": old_queue})
        assert age is not None and 120 <= age < 180
        assert value("dbos_queue_oldest_age_seconds", {"queue": queue.name}) is None  # none waits
        # PENDING and ENQUEUED work of a version no live runtime runs; ours is not stranded.
        assert value("dbos_workflows_stranded", {"app_version": "old"}) == 3
        assert value("dbos_workflows_stranded", {"app_version": "test"}) is None
        # A refresh replaces what the last one said: a queue with no work leaves the gauges.
        await dbos.cancel_workflow(sleeping.workflow_id)
        await conn.execute("DELETE FROM workflow_status WHERE workflow_id = 'old-pending'")
        await metrics.refresh(dbos._runtime)
        assert value("dbos_queue_depth", {"queue": queue.name, "status": "PENDING"}) is None
        assert value("dbos_queue_depth", {"queue": old_queue, "status": "ENQUEUED"}) == 2
        assert value("dbos_workflows_stranded", {"app_version": "old"}) == 2


async def test_without_fleet_gauges_there_are_none(
    db_url: str, registry: CollectorRegistry
) -> None:
    async with runtime(db_url, PrometheusMetrics(registry)):
        await plain(1)
    names = {metric.name for metric in registry.collect()}
    assert "dbos_workflows_started" in names
    assert not names & {
        "dbos_queue_depth",
        "dbos_queue_oldest_age_seconds",
        "dbos_workflows_stranded",
    }


# -- the /metrics endpoint --------------------------------------------------------------


async def test_the_asgi_app_serves_the_registry_in_the_text_format(
    db_url: str, registry: CollectorRegistry
) -> None:
    metrics = PrometheusMetrics(registry)
    async with runtime(db_url, metrics):
        await plain(1)
    for app in (metrics_asgi_app(registry), metrics.metrics_asgi_app()):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
            response = await client.get("/metrics")
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/plain")
        text = response.text
        assert "# TYPE dbos_workflows_started_total counter" in text
        assert "# TYPE dbos_workflow_duration_seconds histogram" in text
        wf = name_of(plain)
        assert f'dbos_workflows_started_total{{queue="",workflow="{wf}"}} 1.0' in text
        assert f'dbos_workflows_finished_total{{status="SUCCESS",workflow="{wf}"}} 1.0' in text
        assert f'dbos_workflows_in_flight{{workflow="{wf}"}} 0.0' in text


def test_every_fresh_registry_gets_its_own_collectors() -> None:
    # Collectors were once cached by id(registry): a new registry reusing a dead
    # one's id got no metrics at all.
    from dbos_async.contrib.prometheus import PrometheusMetrics as Metrics

    for _ in range(200):
        registry = CollectorRegistry()
        Metrics(registry)
        names = {m.name for m in registry.collect()}
        assert "dbos_workflows_started" in names, names
        del registry
