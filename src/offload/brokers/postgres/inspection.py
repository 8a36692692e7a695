"""The PostgreSQL broker's task inspection (:class:`~offload.brokers.base.TaskInspection`):
each call one statement from ``sql/inspect/``, run through the broker's pool."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import Any

from ..base import TaskRecord, check_list_tasks_limit
from .queries import _read, fill

__all__ = ["Inspection"]


@dataclass(frozen=True, slots=True)
class _Statements:
    get_task: str
    list_tasks: str
    run_task: str
    drop_queue: str


@cache
def _statements(schema: str) -> _Statements:
    return _Statements(
        **{
            name: fill(_read("inspect", f"{name}.sql"), schema)
            for name in ("get_task", "list_tasks", "run_task", "drop_queue")
        }
    )


def _record(queue: str, r: Any) -> TaskRecord:
    id_, name, payload, state, visible_at, attempts, first, enq, error, tb, failed, now = r
    if state == "dead":
        kind, eta = "dead", failed
    elif visible_at <= now:
        kind, eta = "ready", visible_at  # due, or a lease that expired: claimable
    else:
        kind, eta = ("scheduled" if state == "ready" else "leased"), visible_at
    return TaskRecord(
        id=id_,
        queue=queue,
        name=name,
        payload=bytes(payload),
        state=kind,
        eta=eta,
        attempts=attempts,
        first_attempt_at=first,
        enqueued_at=enq,
        error=error,
        traceback=tb if state == "dead" else "",
    )


class Inspection:
    """Mixin of :class:`.broker.PostgresBroker` (which supplies ``_one``, ``_all`` and the
    schema in ``config``)."""

    config: Any

    async def _one(self, what: str, sql: str, params: dict[str, Any] | None = None) -> Any:
        raise NotImplementedError  # supplied by PostgresBroker

    async def _all(self, what: str, sql: str, params: dict[str, Any] | None = None) -> list:
        raise NotImplementedError  # supplied by PostgresBroker

    async def get_task(self, queue: str, id: str) -> TaskRecord | None:
        """The task ``id`` of ``queue`` in any state, or None."""
        sql = _statements(self.config.schema).get_task
        rows = await self._all("reading a task", sql, {"queue": queue, "id": id})
        return _record(queue, rows[0]) if rows else None

    async def list_tasks(
        self, queue: str, *, limit: int = 100, after: str | None = None
    ) -> list[TaskRecord]:
        """Up to ``limit`` tasks of ``queue`` with ids above ``after``, in id order."""
        if check_list_tasks_limit(limit) == 0:
            return []
        sql = _statements(self.config.schema).list_tasks
        params = {"queue": queue, "after": after or "", "limit": limit}
        rows = await self._all("listing tasks", sql, params)
        return [_record(queue, r) for r in rows]

    async def run_task(self, queue: str, id: str) -> bool:
        """Make a ready or scheduled task due now; False for a leased, dead or unknown one."""
        sql = _statements(self.config.schema).run_task
        rows = await self._all("running a task now", sql, {"queue": queue, "id": id})
        return bool(rows)

    async def drop_queue(self, queue: str) -> int:
        """Delete every task of ``queue`` (leased and dead ones too), its names and its
        stored policy and pause; returns how many tasks went."""
        sql = _statements(self.config.schema).drop_queue
        return (await self._one("dropping a queue", sql, {"queue": queue}))[0]
