"""The SQLite broker's task inspection (:class:`~offload.brokers.base.TaskInspection`):
one task by id, pages of tasks in id order, running a task now, dropping a queue. The SQL
is ``sql/inspect.sql``; each call is one transaction."""

from __future__ import annotations

import functools
import sqlite3
from typing import Any

from ..base import TaskRecord, check_list_tasks_limit
from .queries import Queries, _read
from .store import Store

__all__ = ["Inspection"]

_READY, _LEASED, _DEAD = 0, 1, 2


@functools.cache
def _queries() -> Queries:
    return Queries(_read("inspect.sql"))


def _record(queue: str, now: float, r: Any) -> TaskRecord:
    id_, name, payload, state, visible_at, attempts, first, enqueued, error, tb, failed = r
    if state == _DEAD:
        kind, eta = "dead", failed
    elif visible_at <= now:
        kind, eta = "ready", visible_at  # due, or a lease that expired: claimable
    else:
        kind, eta = ("scheduled" if state == _READY else "leased"), visible_at
    return TaskRecord(
        id=id_,
        queue=queue,
        name=name,
        payload=payload,
        state=kind,
        eta=eta,
        attempts=attempts,
        first_attempt_at=first,
        enqueued_at=enqueued,
        error=error or "",
        traceback=(tb or "") if state == _DEAD else "",
    )


class Inspection:
    """Mixin of :class:`.broker.SQLiteBroker` (which supplies ``_store`` and ``_ring``)."""

    _store: Store

    def _ring(self) -> None:
        raise NotImplementedError  # supplied by SQLiteBroker

    async def get_task(self, queue: str, id: str) -> TaskRecord | None:
        """The task ``id`` of ``queue`` in any state, or None."""

        def get(conn: sqlite3.Connection, now: float) -> TaskRecord | None:
            row = conn.execute(_queries().get_task, (id, queue)).fetchone()
            return None if row is None else _record(queue, now, row)

        return self._store.read("get_task", get)

    async def list_tasks(
        self, queue: str, *, limit: int = 100, after: str | None = None
    ) -> list[TaskRecord]:
        """Up to ``limit`` tasks of ``queue`` with ids above ``after``, in id order."""
        check_list_tasks_limit(limit)

        def page(conn: sqlite3.Connection, now: float) -> list[TaskRecord]:
            params = {"queue": queue, "after": after or "", "limit": limit}
            rows = conn.execute(_queries().list_tasks, params).fetchall()
            return [_record(queue, now, r) for r in rows]

        return self._store.read("list_tasks", page)

    async def run_task(self, queue: str, id: str) -> bool:
        """Make a ready or scheduled task due now; False for a leased, dead or unknown one."""
        self._store.require_open()
        params = {"queue": queue, "id": id}

        def run(conn: sqlite3.Connection, now: float) -> bool:
            return conn.execute(_queries().run_task, {**params, "now": now}).rowcount == 1

        done = self._store.write("run_task", run)
        if done:
            self._ring()
        return done

    async def drop_queue(self, queue: str) -> int:
        """Delete every task of ``queue`` (leased and dead ones too), its names and its
        stored policy and pause; returns how many tasks went."""
        self._store.require_open()

        def drop(conn: sqlite3.Connection, now: float) -> int:
            q = _queries()
            gone = conn.execute(q.drop_tasks, (queue,)).rowcount
            conn.execute(q.drop_names, (queue,))
            conn.execute(q.drop_queue_row, (queue,))
            return gone

        return self._store.write("drop_queue", drop)
