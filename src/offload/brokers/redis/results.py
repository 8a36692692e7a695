"""The Redis broker's result store (:class:`~offload.brokers.base.ResultStore`).

Keys (``P`` the URL's prefix)::

    {P}:r:<key>        string  the result, with the TTL as PX: Redis expires it itself
    {P}:reply:<chan>   list    (key, value) pairs for one caller, oldest first,
                               expiring with the longest TTL pushed to it

``put_result`` sets the result and pushes it to the caller's list in one script
(``lua/put_result.lua``: atomic, one round trip) on a single server. A caller process
blocks on its own list with ``BLMPOP`` (one connection for any number of concurrent
calls), which takes up to a thousand results at once. A blocking call on a single server
uses a list of its thread's instead: it sends the task and blocks on that list in one
write on its thread's connection (``call_blocking``, :mod:`.direct`), with no hop to
another thread. On Redis Cluster the two keys may live on different nodes, so the writes
are separate commands: a failure between them leaves the result readable by
``get_result`` but its caller not woken (it reaches its deadline).
"""

from __future__ import annotations

import hashlib
import struct
from pathlib import Path
from typing import Any

from ..base import NewTask, check_result
from .direct import DirectCalls, SendLate
from .scripts import Script

__all__ = ["Results"]

_LEN = struct.Struct(">I")
_DRAIN = 1000  # results one pop takes at most
_PUT_SOURCE = (Path(__file__).with_name("lua") / "put_result.lua").read_text()
_PUT = Script("put_result", _PUT_SOURCE, hashlib.sha1(_PUT_SOURCE.encode()).hexdigest())


def _pack(key: str, value: bytes) -> bytes:
    k = key.encode()
    return _LEN.pack(len(k)) + k + value


def _unpack(item: bytes) -> tuple[str, bytes]:
    (n,) = _LEN.unpack_from(item)
    return item[4 : 4 + n].decode(), bytes(item[4 + n :])


class Results:
    """Mixin of :class:`.broker.RedisBroker` (which supplies ``prefix``, ``_cluster``,
    ``_client``, ``_command`` and ``_faults``)."""

    prefix: str
    _cluster: bool
    _faults: Any
    _scripts: dict[str, Any]

    def _client(self) -> Any:
        raise NotImplementedError  # supplied by ScriptCalls

    def _direct_calls(self) -> DirectCalls:
        raise NotImplementedError  # supplied by ScriptCalls

    def _qkeys(self, queue: str) -> Any:
        raise NotImplementedError  # supplied by ScriptCalls

    async def _command(self, op: str, *args: Any) -> Any:
        raise NotImplementedError  # supplied by ScriptCalls

    async def _eval_once(self, op: str, s: Script, keys: tuple[str, ...], args: Any) -> Any:
        raise NotImplementedError  # supplied by ScriptCalls

    def _result_key(self, key: str) -> str:
        return f"{{{self.prefix}}}:r:{key}"

    def _reply_key(self, reply_to: str) -> str:
        return f"{{{self.prefix}}}:reply:{reply_to}"

    async def put_result(
        self, key: str, value: bytes, ttl: float, reply_to: str | None = None
    ) -> None:
        """SET the result with PX ``ttl``; with ``reply_to``, push it to that caller's
        list too, atomically on a single server."""
        ttl_ms = max(1, int(check_result(key, ttl, reply_to) * 1000))
        rkey = self._result_key(key)
        if reply_to is None:
            await self._command("storing a result", "SET", rkey, value, "PX", ttl_ms)
            return
        lkey = self._reply_key(reply_to)
        if self._cluster:
            await self._command("storing a result", "SET", rkey, value, "PX", ttl_ms)
            await self._command("delivering a result", "RPUSH", lkey, _pack(key, value))
            await self._command("delivering a result", "PEXPIRE", lkey, ttl_ms, "GT")
            await self._command("delivering a result", "PEXPIRE", lkey, ttl_ms, "NX")
            return
        # one script: atomic, one round trip on the broker's own connection
        await self._eval_once("storing a result", _PUT, (rkey, lkey), (value, ttl_ms, key))

    def put_result_blocking(
        self, key: str, value: bytes, ttl: float, reply_to: str | None = None
    ) -> bool:
        """:meth:`put_result` from the handler thread that ran the task (the same script,
        on the thread's own connection), so its caller is woken without a turn of the
        worker's loop. False where only :meth:`put_result` stores (Redis Cluster, or no
        reply channel): the worker then stores it from its loop."""
        if self._cluster or reply_to is None:
            return False
        ttl_ms = max(1, int(check_result(key, ttl, reply_to) * 1000))
        keys = (self._result_key(key), self._reply_key(reply_to))
        try:
            self._sync_scripts().eval(_PUT, keys, (value, ttl_ms, key))
        except Exception as exc:
            raise self._faults.error("storing a result", exc) from exc
        return True

    def _sync_scripts(self) -> Any:
        raise NotImplementedError  # supplied by RedisBroker

    async def get_result(self, key: str) -> bytes | None:
        """GET the result; None once Redis expired it."""
        check_result(key, 1.0)
        value = await self._command("reading a result", "GET", self._result_key(key))
        return None if value is None else bytes(value)

    async def wait_results(self, reply_to: str, timeout: float) -> list[tuple[str, bytes]]:
        """Up to a thousand results from this caller's list: ``BLMPOP`` blocking up to
        ``timeout`` seconds, ``LPOP`` when ``timeout`` is 0."""
        check_result("-", 1.0, reply_to)
        lkey = self._reply_key(reply_to)
        if timeout <= 0:  # Redis reads a timeout of 0 as "forever"
            items = await self._command("taking results", "LPOP", lkey, _DRAIN)
            return [_unpack(item) for item in items or ()]
        # One round trip: block until at least one result is there, take up to _DRAIN.
        # The server's timer is coarse (1/hz), but callers keep their own deadlines: this
        # only bounds one listen.
        popped = await self._command(
            "waiting for results", "BLMPOP", max(0.01, round(timeout, 3)), 1, lkey,
            "LEFT", "COUNT", _DRAIN,
        )  # fmt: skip
        if popped is None:
            return []
        return [_unpack(item) for item in popped[1]]

    # -- a blocking call on the calling thread -------------------------------------------

    @property
    def can_call_blocking(self) -> bool:
        """Whether :meth:`call_blocking` works here: on a single server (a cluster keeps
        a queue's keys and a reply list on different nodes)."""
        return not self._cluster

    def call_blocking(self, task: NewTask, reply_to: str, timeout: float) -> bytes | None:
        """Enqueue ``task`` (its ``reply-to`` header naming ``reply_to``, a channel of the
        calling thread's) and wait for its result on the calling thread, at most
        ``timeout`` seconds: the enqueue and a ``BLMPOP`` on the channel's list go out in
        one write. Returns the result; None when the task was stored but its result did
        not come in time. Raises TimeoutError when the enqueue was not answered in time
        (it may still be stored: its deadline has passed by then, so workers drop it),
        and what :meth:`enqueue` raises."""
        check_result(task.id, 1.0, reply_to)
        direct = self._direct_calls()
        keys = self._qkeys(task.queue).keys
        rkey = self._reply_key(reply_to)
        want = task.id

        def mine(item: bytes) -> bytes | None:
            key, value = _unpack(item)
            return value if key == want else None

        try:
            return direct.call(self._scripts["enqueue"], keys, task, rkey, mine, timeout)
        except SendLate:
            raise TimeoutError(f"task {task.id}: the enqueue was not answered in time") from None
        except Exception as exc:
            raise self._faults.error("enqueue", exc) from exc
