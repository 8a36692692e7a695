"""What each task function costs, read back from the workers' measurements.

Workers measure every run's wall time, CPU time and peak resident memory (RSS) and add them
to log-spaced histograms (:class:`offload.worker.metrics.MetricsBuffer`), which the broker
sums across workers in its ``metrics`` store like any other count. This module is the
reading side, with no I/O: :func:`profile` turns ``broker.metrics()`` into one row per task
function and one per service, percentiles read from the histograms.

Histograms: bucket ``i`` holds values in ``[2**(i/4), 2**((i+1)/4))``, four buckets per
doubling, each about 19% wide; zero (and anything not above zero) has its own bucket. A
percentile is interpolated inside the bucket its rank falls in, so it is within that
bucket's width of the exact one, whatever the distribution, for the price of a few dozen
numbers per task function. They are stored in ``TaskMetrics.extra`` as
``h.<measure>.<bucket>`` (``h.wall.-27``, ``h.rss.z``), measures ``wall`` and ``cpu`` in
seconds and ``rss`` in bytes. The write side (a value's bucket, its key) is
:mod:`offload.core.histogram`, which every worker holds; this module only reads.

Rates: the broker keeps runs per minute for two hours (``TaskMetrics.recent``). A task's
``rate`` is its runs in the last 60 minutes (the current one included) divided by the time
those minutes cover; when its first run in the last two hours is more recent than that, by
the time since that first minute began (at least a minute), so a task that started ten
minutes ago shows the rate it has run at, not a sixth of it.

RSS: a process-executor task is measured exactly (its child's peak); a thread or async task
by the worker process's high-water growth during the run, which other tasks running at the
same time share: approximate, and flagged so (``rss_exact``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Protocol

from .brokers.base import TaskMetrics
from .core.histogram import (
    BUCKETS_PER_DOUBLING,
    HIGHEST,
    LOWEST,
    SCALE,
    ZERO,
    bucket,
    bucket_bounds,
    hist_key,
)
from .errors import ConfigError

__all__ = [
    "BUCKETS_PER_DOUBLING",
    "HIGHEST",
    "LOWEST",
    "MEASURES",
    "SCALE",
    "WINDOW_MINUTES",
    "Profile",
    "ServiceProfile",
    "TaskProfile",
    "bucket",
    "bucket_bounds",
    "hist_key",
    "histogram",
    "percentile",
    "profile",
    "rate",
]

#: the measures kept as histograms: wall and CPU seconds, peak RSS bytes
MEASURES = ("wall", "cpu", "rss")
#: minutes a rate is read over
WINDOW_MINUTES = 60


def histogram(extra: Mapping[str, float], measure: str) -> dict[int | None, float]:
    """The buckets of ``measure`` in a ``TaskMetrics.extra``; keys it cannot read (another
    version's) are left out rather than failing the whole profile."""
    prefix = f"h.{measure}."
    out: dict[int | None, float] = {}
    for key, count in extra.items():
        if not key.startswith(prefix) or not count > 0:
            continue
        tail = key[len(prefix) :]
        if tail == ZERO:
            out[None] = out.get(None, 0.0) + count
        elif tail.lstrip("-").isdigit():
            out[int(tail)] = out.get(int(tail), 0.0) + count
    return out


def percentile(hist: Mapping[int | None, float], p: float, top: float | None = None) -> float:
    """The ``p`` quantile (0 < p <= 1) of what ``hist`` counted; 0.0 when it is empty.

    The rank ``p * n`` falls in one bucket; the value is interpolated on a log scale inside
    it, so it lies in the same bucket as the exact nearest-rank value. ``top``, the exact
    maximum when known, caps the highest bucket (a p90 of three runs is not above the
    slowest of them)."""
    if not 0.0 < p <= 1.0:
        raise ConfigError(f"percentile p={p!r}: give a fraction more than 0 and at most 1")
    n = sum(hist.values())
    if n <= 0:
        return 0.0
    if p == 1.0 and top is not None and top > 0:
        return float(top)  # the maximum itself, known exactly
    rank = p * n
    seen = 0.0
    order = sorted(hist, key=lambda i: -math.inf if i is None else i)
    for at, i in enumerate(order, 1):
        c = hist[i]
        if seen + c >= rank or at == len(order):
            if i is None:
                return 0.0
            lo, hi = bucket_bounds(i)
            if top is not None and lo <= top < hi:
                hi = top
            f = min(1.0, max(0.0, (rank - seen - 0.5) / c))
            return lo * (hi / lo) ** f
        seen += c
    return 0.0  # pragma: no cover - the loop returns at the last bucket


def rate(recent: Mapping[int, int], now: float) -> float:
    """Runs per second over the last :data:`WINDOW_MINUTES` minutes (see the module
    docstring for a task that began within them); 0.0 when it did not run."""
    minute = int(now // 60)
    first = minute - WINDOW_MINUTES + 1
    runs = sum(c for m, c in recent.items() if first <= m <= minute + 1)
    if runs <= 0:
        return 0.0
    oldest = min(m for m in recent if TaskMetrics.keeps(m, minute))
    span = now - max(first, oldest) * 60
    return runs / max(span, 60.0)


@dataclass(frozen=True, slots=True)
class TaskProfile:
    """One task function: runs, failures, rate (runs/s) and percentiles of its wall and
    CPU seconds and peak RSS bytes (0 when nothing was measured)."""

    task: str
    service: str
    queue: str
    runs: int
    failures: int
    rate: float
    wall_p50: float
    wall_p90: float
    wall_max: float
    cpu_p50: float
    cpu_p90: float
    cpu_max: float
    rss_peak_p50: int
    rss_peak_p90: int
    rss_peak_max: int
    #: runs that had their RSS measured (the percentiles are over these)
    rss_runs: int
    #: False for thread/async tasks: the worker's growth during the run, shared with any
    #: task running beside it
    rss_exact: bool


@dataclass(frozen=True, slots=True)
class ServiceProfile:
    """One service: its executor and memory limit, and its task functions' sums."""

    service: str
    executor: str
    memory_limit: int | None
    tasks: int
    runs: int
    failures: int
    rate: float
    rss_exact: bool


@dataclass(frozen=True, slots=True)
class Profile:
    """Every task function of an App and every service, as :func:`profile` read them."""

    tasks: tuple[TaskProfile, ...]
    services: tuple[ServiceProfile, ...]

    def to_dict(self) -> dict[str, list[dict[str, Any]]]:
        """``{"tasks": [...], "services": [...]}``: what ``offload profile --json`` prints."""
        return {
            "tasks": [asdict(t) for t in self.tasks],
            "services": [asdict(s) for s in self.services],
        }

    def task(self, name: str) -> TaskProfile:
        """The row of task function ``name``; KeyError naming the known ones."""
        for t in self.tasks:
            if t.task == name:
                return t
        raise KeyError(
            f"no task function {name!r} in this profile (tasks: "
            f"{', '.join(t.task for t in self.tasks) or 'none'})"
        )

    def service(self, name: str) -> ServiceProfile:
        """The row of service ``name``; KeyError naming the known ones."""
        for s in self.services:
            if s.service == name:
                return s
        raise KeyError(
            f"no service {name!r} in this profile (services: "
            f"{', '.join(s.service for s in self.services) or 'none'})"
        )


class _Declared(Protocol):
    """What :func:`profile` reads of an App (or its Registry): names to task functions
    (``.service``, ``.queue``) and to services (``.executor``, ``.memory_limit``)."""

    @property
    def tasks(self) -> Mapping[str, Any]: ...
    @property
    def services(self) -> Mapping[str, Any]: ...


def profile(app: _Declared, metrics: Sequence[TaskMetrics], now: float) -> Profile:
    """Rows for every task function and service ``app`` declares, from ``metrics`` (what
    ``broker.metrics()`` returned) at ``now`` (the broker's clock, epoch seconds). A task
    function with no measurements gets a row of zeros; measurements of task functions the
    App does not declare (another App's, a renamed one's) are left out."""
    if not (isinstance(now, (int, float)) and math.isfinite(now)):
        raise ConfigError(f"profile(now={now!r}): give the broker's clock in epoch seconds")
    by_task = {m.task: m for m in metrics}
    services = app.services
    rows: list[TaskProfile] = []
    for name in sorted(app.tasks):
        fn = app.tasks[name]
        svc = fn.service.name if fn.service is not None else "default"
        exact = _exact(services.get(svc))
        rows.append(_task_row(name, svc, fn.queue, exact, by_task.get(name), now))
    out: list[ServiceProfile] = []
    for name in sorted(services):
        s = services[name]
        mine = [r for r in rows if r.service == name]
        out.append(
            ServiceProfile(
                service=name,
                executor=s.executor,
                memory_limit=s.memory_limit,
                tasks=len(mine),
                runs=sum(r.runs for r in mine),
                failures=sum(r.failures for r in mine),
                rate=sum(r.rate for r in mine),
                rss_exact=_exact(s),
            )
        )
    return Profile(tuple(rows), tuple(out))


def _exact(service: Any) -> bool:
    return service is not None and service.executor == "process"


def _task_row(
    name: str, service: str, queue: str, exact: bool, m: TaskMetrics | None, now: float
) -> TaskProfile:
    if m is None:
        m = TaskMetrics(name)
    wall, cpu, rss = (histogram(m.extra, k) for k in MEASURES)
    rss_max = m.mem_peak_max
    return TaskProfile(
        task=name,
        service=service,
        queue=queue,
        runs=m.count,
        failures=m.failures,
        rate=rate(m.recent, now),
        wall_p50=percentile(wall, 0.5, m.wall_max),
        wall_p90=percentile(wall, 0.9, m.wall_max),
        wall_max=m.wall_max,
        cpu_p50=percentile(cpu, 0.5, m.cpu_max),
        cpu_p90=percentile(cpu, 0.9, m.cpu_max),
        cpu_max=m.cpu_max,
        rss_peak_p50=round(percentile(rss, 0.5, rss_max or None)),
        rss_peak_p90=round(percentile(rss, 0.9, rss_max or None)),
        rss_peak_max=rss_max,
        rss_runs=round(sum(rss.values())),
        rss_exact=exact,
    )
