"""The Redis broker's task inspection (:class:`~offload.brokers.base.TaskInspection`),
every call one run of ``lua/inspect.lua`` on the queue's keys (one cluster slot)."""

from __future__ import annotations

import base64
import binascii
import re
from typing import Any

from ...errors import ConfigError
from ..base import TaskRecord, check_list_tasks_limit
from ..pages import TaskPage

__all__ = ["Inspection"]

_US = 1_000_000
_FIELDS = 10  # per task in inspect.lua's reply
#: a page token: "r.<cursor>", or "r.<cursor>.<count>.<ends>.<last id, base64url>" when
#: the page split one HSCAN batch (see inspect.lua)
_TOKEN = re.compile(r"r\.(\d{1,20})(?:\.(\d{1,5})\.(\d{1,20})\.([A-Za-z0-9_-]+))?")


def _token(cursor: bytes | None, count: int, ends: bytes, last: bytes) -> str | None:
    """The page token of a ``list`` reply's position (None: the scan is complete)."""
    if cursor is None:
        return None
    if not last:
        return f"r.{cursor.decode()}"
    tail = base64.urlsafe_b64encode(last).rstrip(b"=").decode()
    return f"r.{cursor.decode()}.{count}.{ends.decode()}.{tail}"


def _position(after: str | None) -> tuple[str, int, str, bytes]:
    """(cursor, count, ends, last id) from a page token, checked before any I/O."""
    if after is None or after == "":
        return "0", 0, "0", b""
    m = _TOKEN.fullmatch(after) if isinstance(after, str) else None
    if m is None:
        raise ConfigError(
            f"list_tasks: after={after!r} is not a page token of the Redis broker; pass "
            "None for the first page, then next_page_after() of the page before (tokens of "
            "another broker or of a version that paged by task id do not carry over)"
        )
    cursor, count, ends, tail = m.groups()
    if tail is None:
        return cursor, 0, "0", b""
    try:
        last = base64.urlsafe_b64decode(tail + "=" * (-len(tail) % 4))
    except (binascii.Error, ValueError):
        last = b""
    if not last or not 1 <= int(count) <= 10_000:
        raise ConfigError(f"list_tasks: after={after!r} is a damaged page token; start again")
    return cursor, int(count), ends, last


def _records(queue: str, reply: list, first: int = 1) -> list[TaskRecord]:
    now = reply[0]
    out = []
    for i in range(first, len(reply), _FIELDS):
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
        """Up to ``limit`` tasks of ``queue`` in no particular order, from where the page
        token ``after`` points (None: the start). The server scans the task hash with
        HSCAN, about ``limit`` fields a call, so a page costs O(limit), not O(tasks), and
        enqueue and ack keep no index for it. Returns a :class:`TaskPage` whose ``after``
        is the next page's token (None at the end); a page may be short, even empty, with
        more to come."""
        cursor, count, ends, last = _position(after)
        if check_list_tasks_limit(limit) == 0:
            return []
        args = ("list", cursor, count, ends, last, limit)
        reply = await self._read(lambda: self._eval("inspect", queue, args))
        return TaskPage(_records(queue, reply, 5), _token(*reply[1:5]))

    async def run_task(self, queue: str, id: str) -> bool:
        """Make a ready or scheduled task due now; False for a leased, dead or unknown one."""
        return bool(await self._eval("inspect", queue, ("run", id)))

    async def drop_queue(self, queue: str) -> int:
        """Delete every key of ``queue``: its tasks in every state, names, policy, pause
        (and what parked workers' inboxes hold); returns how many tasks went."""
        return int(await self._eval("inspect", queue, ("drop",)))
