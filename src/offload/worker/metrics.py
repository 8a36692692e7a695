"""What each task function cost, summed in the worker and stored in batches: one broker
``record`` call every couple of seconds, not one per task, so measuring stays cheap at
tens of thousands of tasks per second."""

from __future__ import annotations

import logging

from ..brokers.base import Broker, TaskMetrics
from ..errors import BrokerError

__all__ = ["MetricsBuffer"]

log = logging.getLogger("offload.worker")


class MetricsBuffer:
    """Per task function counts and wall/CPU totals and maxima since the last flush."""

    __slots__ = ("_by_task",)

    def __init__(self) -> None:
        self._by_task: dict[str, TaskMetrics] = {}

    def add(self, name: str, wall: float, cpu: float, failed: bool) -> None:
        m = self._by_task.get(name)
        if m is None:
            m = self._by_task[name] = TaskMetrics(name)
        m.count += 1
        m.failures += failed
        m.wall_total += wall
        m.cpu_total += cpu
        if wall > m.wall_max:
            m.wall_max = wall
        if cpu > m.cpu_max:
            m.cpu_max = cpu

    def count(self, name: str, measure: str) -> None:
        """Add one to a named count of ``name`` (e.g. ``expired``: dropped unrun)."""
        m = self._by_task.get(name)
        if m is None:
            m = self._by_task[name] = TaskMetrics(name)
        m.extra[measure] = m.extra.get(measure, 0.0) + 1.0

    async def flush(self, broker: Broker) -> None:
        """Store what was summed; a broker that is away costs these numbers, not the run."""
        if not self._by_task:
            return
        batch, self._by_task = list(self._by_task.values()), {}
        try:
            await broker.record(batch)
        except BrokerError as exc:  # an outage, a full broker (Redis OOM), a refusal
            log.warning("could not store task metrics: %s", exc)
        except Exception:  # measuring must never cost the worker
            log.exception("could not store task metrics")
