"""Prometheus metrics at ``/metrics``, in prometheus-client's text format.

Two sources, kept apart so a scrape of several processes never counts anything twice:

- :class:`BrokerCollector` reads the broker at scrape time: what every worker stored, the
  same numbers as ``app.stats`` and ``app.metrics``. Per queue: ``offload_queue_ready``,
  ``_scheduled``, ``_leased``, ``_dead``, ``_paused`` and
  ``offload_queue_oldest_ready_age_seconds``; per task function:
  ``offload_task_processed_total``, ``offload_task_failed_total``,
  ``offload_task_expired_total`` (dropped unrun: the caller's deadline had passed),
  ``offload_task_cpu_seconds_total``, ``offload_task_duration_max_seconds`` and the
  ``offload_task_duration_seconds`` histogram (the broker keeps sums, so its only bucket is
  ``+Inf``). Per pool of the App's topology (one pool ``all`` without one), what an
  autoscaler reads: ``offload_pool_ready``, ``_in_flight``, ``_oldest_ready_age_seconds``,
  ``_concurrency`` (per worker), ``_replicas_min``, ``_replicas_max``,
  ``_target_latency_seconds`` and ``_workers_needed`` (the workers that would hold every
  task in flight and ready at once, within the bounds: a target for KEDA or an HPA).
  ``offload serve`` and every worker's ``--metrics-port`` expose these.
- :class:`WorkerMetrics` (a :class:`~offload.hooks.Hooks`) counts what one worker process
  saw as it happened: ``offload_worker_processed_total``, ``_failed_total``,
  ``_retried_total``, ``_lease_expired_total`` (claims that took over an expired lease),
  ``_dead_total`` and the ``offload_worker_duration_seconds`` histogram with real buckets,
  per task function. Only a worker's ``--metrics-port`` exposes these; sum them across
  workers in the query.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram
from prometheus_client.exposition import generate_latest
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from ..autoscale import ScalePolicy, pool_signals, queue_signals, workers_needed
from ..errors import BrokerError, ConfigError
from ..hooks import Hooks
from .auth import error_response

if TYPE_CHECKING:
    from ..app import App
    from ..brokers.base import Broker, Claimed, QueueStats
    from ..task import TaskInfo
    from ..topology import Placement
    from .context import HttpContext

__all__ = ["BrokerCollector", "WorkerMetrics", "routes"]

#: where a worker's own registry lives in ``HttpContext.extras``
EXTRA = "metrics.worker"


class BrokerCollector:
    """Reads every declared queue's counts and every task function's aggregates from the
    broker when scraped (one hop to the broker for all of it)."""

    def __init__(self, app: App) -> None:
        self.app = app
        self._placement: Placement | None = None
        self._placement_error = False

    def placement(self) -> Placement | None:
        """The App's pools, read once; None (no pool gauges) when its topology file is
        broken: the scrape still serves the queues, and ``offload check`` says what is
        wrong."""
        if self._placement is None and not self._placement_error:
            try:
                self._placement = self.app.placement()
            except ConfigError:
                self._placement_error = True
        return self._placement

    def read(self) -> tuple[list[QueueStats], float, list[Any]]:
        names = sorted(self.app.queues)

        async def op(b: Broker) -> tuple[list[QueueStats], float, list[Any]]:
            stats = [await b.stats(q) for q in names]
            return stats, await b.now(), await b.metrics()

        return self.app.registry.call(op)

    def collect(self) -> Iterator[Metric]:
        stats, now, metrics = self.read()
        label = ["queue"]
        gauges = {
            field: GaugeMetricFamily(f"offload_queue_{field}", help, labels=label)
            for field, help in (
                ("ready", "Tasks due now, waiting for a worker"),
                ("scheduled", "Tasks whose eta is in the future"),
                ("leased", "Tasks a worker holds"),
                ("dead", "Dead letters"),
                ("paused", "1 when the queue is paused"),
            )
        }
        age = GaugeMetricFamily(
            "offload_queue_oldest_ready_age_seconds",
            "Seconds the oldest claimable task has waited (0 when none waits)",
            labels=label,
        )
        for s in stats:
            for field, family in gauges.items():
                family.add_metric([s.queue], float(getattr(s, field)))
            oldest = s.oldest_ready_at
            age.add_metric([s.queue], 0.0 if oldest is None else max(0.0, now - oldest))
        yield from gauges.values()
        yield age
        yield from self._pools(stats, now)
        task = ["task"]
        processed = CounterMetricFamily(
            "offload_task_processed", "Runs finished (any outcome), all workers", labels=task
        )
        failed = CounterMetricFamily(
            "offload_task_failed", "Runs that raised, all workers", labels=task
        )
        expired = CounterMetricFamily(
            "offload_task_expired",
            "Tasks dropped unrun because their caller's deadline had passed, all workers",
            labels=task,
        )
        cpu = CounterMetricFamily(
            "offload_task_cpu_seconds", "CPU seconds spent in runs, all workers", labels=task
        )
        longest = GaugeMetricFamily(
            "offload_task_duration_max_seconds", "The longest run's wall time", labels=task
        )
        duration = HistogramMetricFamily(
            "offload_task_duration_seconds",
            "Wall time of runs, all workers (bucketed by each worker's --metrics-port)",
            labels=task,
        )
        for m in sorted(metrics, key=lambda m: m.task):
            processed.add_metric([m.task], m.count)
            failed.add_metric([m.task], m.failures)
            expired.add_metric([m.task], m.extra.get("expired", 0.0))
            cpu.add_metric([m.task], m.cpu_total)
            longest.add_metric([m.task], m.wall_max)
            duration.add_metric([m.task], [("+Inf", m.count)], m.wall_total)
        yield from (processed, failed, expired, cpu, longest, duration)

    def _pools(self, stats: list[QueueStats], now: float) -> Iterator[Metric]:
        placement = self.placement()
        if placement is None:
            return
        by_queue = {
            s.queue: queue_signals(s.ready, s.leased, s.oldest_ready_at, now) for s in stats
        }
        label = ["pool"]
        fams = {
            name: GaugeMetricFamily(f"offload_pool_{name}", help, labels=label)
            for name, help in (
                ("ready", "Tasks due now on the pool's queues, waiting for a worker"),
                ("in_flight", "Tasks the pool's workers hold"),
                ("oldest_ready_age_seconds", "The longest wait on the pool's queues (0: none)"),
                ("concurrency", "Tasks in flight per worker of the pool"),
                ("replicas_min", "The pool's fewest worker processes"),
                ("replicas_max", "The pool's most worker processes"),
                ("target_latency_seconds", "The wait above which the pool scales up"),
                ("workers_needed", "Workers holding all its work at once, within min-max"),
            )
        }
        for name, pool in placement.pools.items():
            sig = pool_signals(by_queue[q] for q in placement.queues[name] if q in by_queue)
            queues = placement.queues[name]
            declared = self.app.registry.queues
            caps = [declared[q].max_concurrent if q in declared else None for q in queues]
            policy = ScalePolicy.for_pool(pool, None, caps)
            for field, value in (
                ("ready", sig.ready),
                ("in_flight", sig.in_flight),
                ("oldest_ready_age_seconds", sig.oldest_ready_age or 0.0),
                ("concurrency", policy.concurrency),
                ("replicas_min", policy.minimum),
                ("replicas_max", policy.maximum),
                ("target_latency_seconds", policy.target_latency),
                ("workers_needed", workers_needed(sig, policy)),
            ):
                fams[field].add_metric([name], float(value))
        yield from fams.values()


class WorkerMetrics(Hooks):
    """One worker's own counts and a duration histogram, from the worker's hooks. They
    only add to prometheus-client's metrics (which take their own locks) and set or pop
    one dict entry per task (atomic), so handler threads may call them too
    (``thread_safe``: the worker keeps its lanes on with ``--metrics-port``)."""

    thread_safe = True

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        labels = ["task"]
        self.processed_total = Counter(
            "offload_worker_processed", "Runs this worker finished", labels, registry=self.registry
        )
        self.failed_total = Counter(
            "offload_worker_failed", "Runs that raised here", labels, registry=self.registry
        )
        self.retried_total = Counter(
            "offload_worker_retried", "Runs that will run again", labels, registry=self.registry
        )
        self.dead_total = Counter(
            "offload_worker_dead", "Runs dead-lettered here", labels, registry=self.registry
        )
        self.expired_total = Counter(
            "offload_worker_lease_expired",
            "Claims that took over an expired lease (a worker died or hung)",
            ["queue"],
            registry=self.registry,
        )
        self.durations = Histogram(
            "offload_worker_duration_seconds",
            "Wall time of runs on this worker",
            labels,
            registry=self.registry,
        )
        self._running: dict[str, tuple[str, float]] = {}

    def claimed(self, claim: Claimed) -> None:
        if claim.expired:
            self.expired_total.labels(claim.queue).inc()

    def started(self, info: TaskInfo) -> None:
        self._running[info.id] = (info.task, time.perf_counter())

    def _finish(self, id: str) -> str | None:
        found = self._running.pop(id, None)
        if found is None:
            return None
        task, t0 = found
        self.processed_total.labels(task).inc()
        self.durations.labels(task).observe(time.perf_counter() - t0)
        return task

    def succeeded(self, info: TaskInfo) -> None:
        self._finish(info.id)

    def retried(self, claim: Claimed, delay: float, error: str) -> None:
        task = self._finish(claim.id)
        if task is not None:
            self.failed_total.labels(task).inc()
            self.retried_total.labels(task).inc()

    def dead(self, claim: Claimed, error: str) -> None:
        task = self._finish(claim.id)
        if task is not None:
            self.failed_total.labels(task).inc()
            self.dead_total.labels(task).inc()


def exposition(ctx: HttpContext) -> bytes:
    """The text a scrape gets: the broker's numbers, and this worker's when it has any."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(BrokerCollector(ctx.app))  # type: ignore[arg-type]
    text = generate_latest(registry)
    worker = ctx.extras.get(EXTRA)
    if isinstance(worker, WorkerMetrics):
        text += generate_latest(worker.registry)
    return text


def routes(ctx: HttpContext) -> list[BaseRoute]:
    """``GET /metrics``, behind the server's auth like every other route."""

    async def metrics(request: Request) -> Response:
        try:
            body = await ctx.call(exposition, ctx)
        except BrokerError as exc:
            return error_response(503, f"cannot read the broker for /metrics: {exc}")
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    return [Route("/metrics", metrics, methods=["GET"])]
