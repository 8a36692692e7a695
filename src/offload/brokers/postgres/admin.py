"""The PostgreSQL broker's inspection and administration calls (stats, dead letters,
requeue, purge, delete, metrics, the clock): each one statement from ``sql/queries/``, run
through the broker's pool by the helpers :class:`.broker.PostgresBroker` supplies."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from psycopg.types.json import Jsonb

from ...errors import ConfigError
from ..base import (
    DeadLetter,
    EnforcedPolicy,
    QueueStats,
    TaskMetrics,
    check_dead_letters_limit,
)
from .queries import Queries

__all__ = ["Admin"]


class Admin:
    """Mixin of :class:`.broker.PostgresBroker`: the calls off the hot path."""

    _q: Queries

    async def _one(self, what: str, sql: str, params: dict[str, Any] | None = None) -> Any:
        raise NotImplementedError  # supplied by PostgresBroker

    async def _all(self, what: str, sql: str, params: dict[str, Any] | None = None) -> list:
        raise NotImplementedError  # supplied by PostgresBroker

    async def _exec(self, what: str, sql: str, params: dict[str, Any] | None = None) -> None:
        raise NotImplementedError  # supplied by PostgresBroker

    async def stats(self, queue: str) -> QueueStats:
        """Counts by state, pause, and the policy stored for the queue (None when it was
        never declared)."""
        r = await self._one("reading stats", self._q.stats, {"queue": queue})
        policy = (
            EnforcedPolicy(
                rate=r[6], bucket=r[7], max_concurrent=r[8], lease=r[9], dedup_window=r[10]
            )
            if r[5]
            else None
        )
        return QueueStats(
            queue,
            ready=r[0],
            scheduled=r[1],
            leased=r[2],
            dead=r[3],
            paused=r[4],
            policy=policy,
            oldest_ready_at=r[11],
        )

    async def dead_letters(self, queue: str, limit: int = 100) -> list[DeadLetter]:
        """Oldest failure first, at most ``limit`` (an int from 0 to 10,000, else
        ConfigError before any I/O)."""
        check_dead_letters_limit(limit)
        rows = await self._all(
            "listing dead letters", self._q.dead_letters, {"queue": queue, "limit": limit}
        )
        return [DeadLetter(*r) for r in rows]

    async def requeue_dead(self, queue: str, ids: Sequence[str] | None = None) -> int:
        params = {"queue": queue, "ids": None if ids is None else list(ids)}
        return (await self._one("requeueing dead letters", self._q.requeue_dead, params))[0]

    async def purge(self, queue: str) -> int:
        return (await self._one("purging", self._q.purge, {"queue": queue}))[0]

    async def delete(self, queue: str, *, id: str | None = None, name: str | None = None) -> bool:
        if id is None and name is None:
            raise ConfigError("delete(queue, id=..., name=...): give id or name")
        params = {"queue": queue, "id": id, "name": name}
        return (await self._one("deleting a task", self._q.delete, params))[0] > 0

    async def record(self, metrics: Sequence[TaskMetrics]) -> None:
        if not metrics:
            return
        merged: dict[str, TaskMetrics] = {}
        now_runs: dict[str, int] = {}
        for m in metrics:  # one row per task: ON CONFLICT may touch a row only once
            acc = merged.setdefault(m.task, TaskMetrics(m.task))
            acc.count += m.count
            acc.failures += m.failures
            acc.wall_total += m.wall_total
            acc.wall_max = max(acc.wall_max, m.wall_max)
            acc.cpu_total += m.cpu_total
            acc.cpu_max = max(acc.cpu_max, m.cpu_max)
            acc.mem_peak_max = max(acc.mem_peak_max, m.mem_peak_max)
            for k, v in m.extra.items():  # as record.sql: *_max keys keep the largest
                old = acc.extra.get(k)
                if old is None:
                    acc.extra[k] = float(v)
                else:
                    acc.extra[k] = max(old, float(v)) if k.endswith("_max") else old + float(v)
            for slot, runs in m.recent.items():
                acc.recent[slot] = acc.recent.get(slot, 0) + int(runs)
            if not m.recent:  # its runs fall in the server's current minute (record.sql)
                now_runs[m.task] = now_runs.get(m.task, 0) + m.count
        ms = list(merged.values())
        params = {
            "tasks": [m.task for m in ms],
            "counts": [m.count for m in ms],
            "failures": [m.failures for m in ms],
            "wall_totals": [float(m.wall_total) for m in ms],
            "wall_maxes": [float(m.wall_max) for m in ms],
            "cpu_totals": [float(m.cpu_total) for m in ms],
            "cpu_maxes": [float(m.cpu_max) for m in ms],
            "mem_peak_maxes": [int(m.mem_peak_max) for m in ms],
            "extras": [Jsonb(m.extra) for m in ms],
            "recents": [Jsonb({str(k): v for k, v in m.recent.items()}) for m in ms],
            "now_runs": [now_runs.get(m.task, 0) for m in ms],
        }
        await self._exec("recording metrics", self._q.record, params)

    async def metrics(self) -> list[TaskMetrics]:
        rows = await self._all("reading metrics", self._q.metrics)
        return [TaskMetrics.from_row(r, {k: float(v) for k, v in r[8].items()}, r[9]) for r in rows]

    async def now(self) -> float:
        return (await self._one("reading the clock", self._q.now))[0]
