"""The Redis broker's task inspection (:class:`~offload.brokers.base.TaskInspection`),
every call one run of ``lua/inspect.lua`` on the queue's keys (one cluster slot)."""

from __future__ import annotations

from typing import Any

from ..base import TaskRecord, check_list_tasks_limit

__all__ = ["Inspection"]

_US = 1_000_000
_FIELDS = 10  # per task in inspect.lua's reply


def _records(queue: str, reply: list) -> list[TaskRecord]:
    now = reply[0]
    out = []
    for i in range(1, len(reply), _FIELDS):
        id_, name, payload, s, eta, attempts, first, enq, err, tb = reply[i : i + _FIELDS]
        if s == b"d":
            state = "dead"
        elif eta <= now:
            state = "ready"  # due, or a lease that expired: claimable
        else:
            state = "scheduled" if s == b"r" else "leased"
        out.append(
            TaskRecord(
                id=id_.decode(),
                queue=queue,
                name=None if name is None else name.decode(errors="replace"),
                payload=payload,
                state=state,
                eta=eta / _US,
                attempts=attempts,
                first_attempt_at=first / _US if first else None,
                enqueued_at=enq / _US,
                error=err.decode(errors="replace"),
                traceback=tb.decode(errors="replace") if s == b"d" else "",
            )
        )
    return out


class Inspection:
    """Mixin of :class:`.broker.RedisBroker` (which supplies ``_eval`` and ``_read``)."""

    async def _eval(self, name: str, queue: str, args: Any = ()) -> Any:
        raise NotImplementedError  # supplied by RedisBroker

    async def _read(self, fn: Any) -> Any:
        raise NotImplementedError  # supplied by RedisBroker

    async def get_task(self, queue: str, id: str) -> TaskRecord | None:
        """The task ``id`` of ``queue`` in any state, or None."""
        reply = await self._read(lambda: self._eval("inspect", queue, ("get", id)))
        got = _records(queue, reply)
        return got[0] if got else None

    async def list_tasks(
        self, queue: str, *, limit: int = 100, after: str | None = None
    ) -> list[TaskRecord]:
        """Up to ``limit`` tasks of ``queue`` with ids above ``after``, in id order. The
        server reads one page of the queue's id index (a sorted set kept by enqueue, ack,
        delete and purge): a page costs O(log tasks + limit), not O(tasks)."""
        if check_list_tasks_limit(limit) == 0:
            return []
        args = ("list", after or "", limit)
        return _records(queue, await self._read(lambda: self._eval("inspect", queue, args)))

    async def run_task(self, queue: str, id: str) -> bool:
        """Make a ready or scheduled task due now; False for a leased, dead or unknown one."""
        return bool(await self._eval("inspect", queue, ("run", id)))

    async def drop_queue(self, queue: str) -> int:
        """Delete every key of ``queue``: its tasks in every state, names, policy, pause
        (and what parked workers' inboxes hold); returns how many tasks went."""
        return int(await self._eval("inspect", queue, ("drop",)))
