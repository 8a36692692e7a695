"""What each task function cost, summed in the worker and stored in batches: one broker
``record`` call every couple of seconds, not one per task, so measuring stays cheap at
tens of thousands of tasks per second.

Besides counts, totals and maxima, every run's wall time, CPU time and (when measured)
peak RSS go into log-spaced histograms (see :mod:`offload.profile`), kept here by bucket
number and written into ``TaskMetrics.extra`` as ``h.<measure>.<bucket>`` counts at flush,
which every broker sums like its other counts: percentiles come back from the broker.
"""

from __future__ import annotations

import logging
import threading
from math import floor
from math import log as ln

from ..brokers.base import Broker, TaskMetrics
from ..core.histogram import HIGHEST, LOWEST, SCALE, bucket, hist_key
from ..errors import BrokerError

__all__ = ["MetricsBuffer"]

log = logging.getLogger("offload.worker")
_BIG = 1e300  # below this a value takes the fast path to its bucket (inf does not)


class _Sums:
    """One task function's sums since the last flush, its histograms by bucket number
    (None: the zero bucket): formatting keys per run would cost more than the counting."""

    __slots__ = ("cpu", "m", "rss", "wall")

    def __init__(self, name: str) -> None:
        self.m = TaskMetrics(name)
        self.wall: dict[int | None, int] = {}
        self.cpu: dict[int | None, int] = {}
        self.rss: dict[int | None, int] = {}

    def finish(self) -> TaskMetrics:
        """The TaskMetrics to record, its histograms added to ``extra``."""
        m, extra = self.m, self.m.extra
        for measure, hist in (("wall", self.wall), ("cpu", self.cpu), ("rss", self.rss)):
            for i, n in hist.items():
                key = hist_key(measure, i if i is None else max(LOWEST, min(HIGHEST, i)))
                extra[key] = extra.get(key, 0.0) + float(n)
        return m


class MetricsBuffer:
    """Per task function counts, wall/CPU totals, maxima and histograms since the last
    flush."""

    __slots__ = ("_by_task", "_lock")

    def __init__(self) -> None:
        self._by_task: dict[str, _Sums] = {}
        self._lock = threading.Lock()  # the loop and the lanes' threads both add

    def add(self, name: str, wall: float, cpu: float, failed: bool, rss: int | None = None) -> None:
        """One run of task function ``name``: ``wall`` and ``cpu`` seconds, whether it
        ``failed``, and ``rss``, its peak resident memory in bytes (a process task's child
        peak; for a thread or async task the worker's high-water growth during the run),
        None when it was not measured. Runs once per task: no allocation beyond the
        counters."""
        with self._lock:
            s = self._by_task.get(name)
            if s is None:
                s = self._by_task[name] = _Sums(name)
            m = s.m
            m.count += 1
            m.failures += failed
            m.wall_total += wall
            m.cpu_total += cpu
            if wall > m.wall_max:
                m.wall_max = wall
            if cpu > m.cpu_max:
                m.cpu_max = cpu
            h = s.wall
            i = floor(ln(wall) * SCALE) if 0.0 < wall < _BIG else bucket(wall)
            h[i] = h.get(i, 0) + 1
            h = s.cpu
            i = floor(ln(cpu) * SCALE) if 0.0 < cpu < _BIG else bucket(cpu)
            h[i] = h.get(i, 0) + 1
            if rss is not None:
                if rss > m.mem_peak_max:
                    m.mem_peak_max = int(rss)
                h = s.rss
                i = floor(ln(rss) * SCALE) if 0 < rss < _BIG else bucket(rss)
                h[i] = h.get(i, 0) + 1

    def count(self, name: str, measure: str) -> None:
        """Add one to a named count of ``name`` (e.g. ``expired``: dropped unrun)."""
        with self._lock:
            s = self._by_task.get(name)
            if s is None:
                s = self._by_task[name] = _Sums(name)
            extra = s.m.extra
            extra[measure] = extra.get(measure, 0.0) + 1.0

    def take(self) -> list[TaskMetrics]:
        """What was summed since the last take, ready for ``broker.record``; empties the
        buffer."""
        with self._lock:
            sums, self._by_task = self._by_task, {}
        return [s.finish() for s in sums.values()]

    async def flush(self, broker: Broker) -> None:
        """Store what was summed; a broker that is away costs these numbers, not the run."""
        if not self._by_task:
            return
        batch = self.take()
        try:
            await broker.record(batch)
        except BrokerError as exc:  # an outage, a full broker (Redis OOM), a refusal
            log.warning("could not store task metrics: %s", exc)
        except Exception:  # measuring must never cost the worker
            log.exception("could not store task metrics")
