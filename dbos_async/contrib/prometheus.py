"""Prometheus metrics (extra ``prometheus``): ``DBOS(observers=[PrometheusMetrics()])``.

In seconds, and never a workflow ID as a label (its cardinality is unbounded):

========================================  ==================  =============================
metric                                    labels              what
========================================  ==================  =============================
``dbos_workflows_started_total``          workflow, queue     executions begun by a start, a
                                                              dequeue, a resume, fork or
                                                              restart (queue "" if none)
``dbos_workflows_finished_total``         workflow, status    SUCCESS, ERROR, CANCELLED,
                                                              STOPPED (no outcome here)
``dbos_workflow_duration_seconds``        workflow, status    one execution, start to end
``dbos_step_duration_seconds``            step, status        a step or transaction, retries
                                                              included
``dbos_step_retries_total``               step                failed attempts retried
``dbos_queue_wait_seconds``               queue               enqueue to dequeue
``dbos_workflow_recoveries_total``        workflow            recovered or adopted executions
``dbos_workflows_in_flight``              workflow            executions running here now
========================================  ==================  =============================

With ``fleet_gauges=True`` (on one process of the fleet: they read the
database) a task refreshes, every ``refresh_seconds``, off the request path:
``dbos_queue_depth{queue,status}``, ``dbos_queue_oldest_age_seconds{queue}``
and ``dbos_workflows_stranded{app_version}``.

``metrics_asgi_app()`` is an ASGI app serving the registry (mount it at
``/metrics``). A registry can be passed in; by default metrics go to
``prometheus_client``'s global one.
"""

from __future__ import annotations

import asyncio
import time
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, make_asgi_app

from dbos_async.errors import DBOSError
from dbos_async.logs import get_logger
from dbos_async.observers import (
    DEQUEUE,
    RECONCILE,
    RESUME,
    START,
    Observer,
    StepEvent,
    WorkflowEvent,
)
from dbos_async.systemdb.queries import q

if TYPE_CHECKING:
    from dbos_async.runtime import Runtime

logger = get_logger(__name__)

_DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800)
_WAIT_BUCKETS = (0.001, 0.01, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 1800, 3600, 21600, 86400)


class PrometheusMetrics(Observer):
    """An observer that keeps Prometheus metrics (see the module docstring).

    Args:
        registry: Where the metrics are registered; None: the global registry.
        fleet_gauges: Also keep the fleet-wide gauges read from the database.
        refresh_seconds: How often those are read.
    """

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        *,
        fleet_gauges: bool = False,
        refresh_seconds: float = 15.0,
    ) -> None:
        self.registry = registry if registry is not None else REGISTRY
        self.metrics = _collectors(self.registry, fleet_gauges)
        self.fleet_gauges = fleet_gauges
        self.refresh_seconds = refresh_seconds
        self._began: dict[str, float] = {}
        self._steps: dict[tuple[str, str, int], float] = {}
        self._refresher: asyncio.Task[None] | None = None

    def metrics_asgi_app(self) -> Any:
        """An ASGI app serving this registry in Prometheus' text format."""
        return metrics_asgi_app(self.registry)

    # -- hooks ------------------------------------------------------------------------------

    def runtime_launched(self, runtime: Runtime) -> None:
        """Start the fleet gauges' refresher, if asked for."""
        old = self._refresher
        if old is not None and not old.done():
            old.cancel()  # another runtime's (one that crashed never said it stopped)
        if self.fleet_gauges:
            self._refresher = asyncio.get_running_loop().create_task(
                self._refresh_forever(runtime), name="dbos_async prometheus fleet gauges"
            )

    def runtime_stopping(self, runtime: Runtime) -> None:
        """Stop the refresher."""
        task, self._refresher = self._refresher, None
        if task is not None:
            task.cancel()

    def workflow_started(self, workflow: WorkflowEvent) -> None:
        """Count it (a start, a dequeue, a resume, fork or restart), and time it."""
        if workflow.origin in (START, DEQUEUE, RESUME, RECONCILE):
            self.metrics.started.labels(workflow.name, workflow.queue_name or "").inc()
        self.metrics.in_flight.labels(workflow.name).inc()
        self._began[workflow.workflow_id] = time.monotonic()

    def workflow_dequeued(self, workflow: WorkflowEvent, waited_seconds: float) -> None:
        """How long it waited in its queue."""
        self.metrics.queue_wait.labels(workflow.queue_name or "").observe(waited_seconds)

    def workflow_recovered(self, workflow: WorkflowEvent) -> None:
        """A recovery or an adoption."""
        self.metrics.recoveries.labels(workflow.name).inc()

    def workflow_finished(
        self,
        workflow: WorkflowEvent,
        status: str,
        error: BaseException | None,
        output: Any,
        replayed_steps: int,
    ) -> None:
        """Count how it ended, and how long this execution took."""
        self.metrics.finished.labels(workflow.name, status).inc()
        self.metrics.in_flight.labels(workflow.name).dec()
        began = self._began.pop(workflow.workflow_id, None)
        if began is not None:
            self.metrics.duration.labels(workflow.name, status).observe(time.monotonic() - began)

    def step_started(self, step: StepEvent, attempt: int) -> None:
        """Time the step from its first attempt."""
        if attempt == 1:
            self._steps[(step.workflow.workflow_id, step.branch, step.step_id)] = time.monotonic()

    def step_retried(
        self, step: StepEvent, attempt: int, error: BaseException, delay_seconds: float
    ) -> None:
        """One more retry."""
        self.metrics.retries.labels(step.name).inc()

    def step_finished(
        self, step: StepEvent, status: str, error: BaseException | None, attempts: int, output: Any
    ) -> None:
        """How long the step took, retries included."""
        began = self._steps.pop((step.workflow.workflow_id, step.branch, step.step_id), None)
        if began is not None:
            self.metrics.step_duration.labels(step.name, status).observe(time.monotonic() - began)

    # -- fleet gauges -----------------------------------------------------------------------

    async def refresh(self, runtime: Runtime) -> None:
        """Read the fleet-wide gauges from the database once."""
        from dbos_async.versions import list_application_versions

        depth, oldest, stranded = (
            self.metrics.queue_depth,
            self.metrics.queue_oldest,
            self.metrics.stranded,
        )
        if depth is None or oldest is None or stranded is None:
            raise DBOSError("PrometheusMetrics(fleet_gauges=True) keeps the fleet gauges")
        now_ms = runtime.clock.now_ms()
        async with runtime.connection() as conn:
            rows = await conn.fetch(q(conn, "select_queue_depths"))
        versions = await list_application_versions(runtime.pool, runtime.clock)
        # Everything read first: a scrape never sees the gauges half-cleared.
        depth.clear()
        oldest.clear()
        for row in rows:
            depth.labels(row["queue_name"], "ENQUEUED").set(row["enqueued"])
            depth.labels(row["queue_name"], "PENDING").set(row["pending"])
            if row["oldest_enqueued"] is not None:
                oldest.labels(row["queue_name"]).set(max(0, now_ms - row["oldest_enqueued"]) / 1000)
        stranded.clear()
        for version in versions:
            if version.stranded:
                stranded.labels(version.version).set(version.stranded)

    async def _refresh_forever(self, runtime: Runtime) -> None:
        while True:
            try:
                await self.refresh(runtime)
            except Exception as exc:  # a lost database: the next round tries again
                logger.warning("metrics: fleet gauges not refreshed: %r", exc)
            await asyncio.sleep(self.refresh_seconds)


@dataclass
class _Collectors:
    """The collectors of one registry (see the module docstring)."""

    started: Counter
    finished: Counter
    duration: Histogram
    step_duration: Histogram
    retries: Counter
    queue_wait: Histogram
    recoveries: Counter
    in_flight: Gauge
    queue_depth: Gauge | None = None  # the fleet gauges, once asked for
    queue_oldest: Gauge | None = None
    stranded: Gauge | None = None


# One set per registry: several runtimes (or observers) of a process on the
# global registry share them, where registering twice would raise.
_COLLECTORS: weakref.WeakKeyDictionary[CollectorRegistry, _Collectors] = weakref.WeakKeyDictionary()


def _collectors(r: CollectorRegistry, fleet_gauges: bool) -> _Collectors:
    found = _COLLECTORS.get(r)
    if found is None:
        found = _COLLECTORS[r] = _Collectors(
            started=Counter(
                "dbos_workflows_started",
                "Workflow executions begun by a start, a dequeue or a resume",
                ["workflow", "queue"],
                registry=r,
            ),
            finished=Counter(
                "dbos_workflows_finished",
                "Workflow executions ended, by how",
                ["workflow", "status"],
                registry=r,
            ),
            duration=Histogram(
                "dbos_workflow_duration_seconds",
                "One workflow execution, start to end",
                ["workflow", "status"],
                buckets=_DURATION_BUCKETS,
                registry=r,
            ),
            step_duration=Histogram(
                "dbos_step_duration_seconds",
                "A step or transaction, its retries included",
                ["step", "status"],
                buckets=_DURATION_BUCKETS,
                registry=r,
            ),
            retries=Counter(
                "dbos_step_retries", "Failed step attempts that were retried", ["step"], registry=r
            ),
            queue_wait=Histogram(
                "dbos_queue_wait_seconds",
                "Enqueue to dequeue",
                ["queue"],
                buckets=_WAIT_BUCKETS,
                registry=r,
            ),
            recoveries=Counter(
                "dbos_workflow_recoveries",
                "Executions recovered or adopted after a runtime died",
                ["workflow"],
                registry=r,
            ),
            in_flight=Gauge(
                "dbos_workflows_in_flight",
                "Workflow executions running in this process",
                ["workflow"],
                registry=r,
            ),
        )
    if fleet_gauges and found.queue_depth is None:
        found.queue_depth = Gauge(
            "dbos_queue_depth",
            "Workflows on each queue, by status (whole fleet)",
            ["queue", "status"],
            registry=r,
        )
        found.queue_oldest = Gauge(
            "dbos_queue_oldest_age_seconds",
            "Age of each queue's oldest ENQUEUED workflow",
            ["queue"],
            registry=r,
        )
        found.stranded = Gauge(
            "dbos_workflows_stranded",
            "PENDING and ENQUEUED workflows of versions no live runtime runs",
            ["app_version"],
            registry=r,
        )
    return found


def metrics_asgi_app(registry: CollectorRegistry | None = None) -> Any:
    """An ASGI app serving ``registry`` (default: the global one), to mount at ``/metrics``."""
    return make_asgi_app(registry=registry if registry is not None else REGISTRY)
