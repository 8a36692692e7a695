"""The Redis broker's result store (:class:`~offload.brokers.base.ResultStore`).

Keys (``P`` the URL's prefix)::

    {P}:r:<key>        string  the result, with the TTL as PX: Redis expires it itself
    {P}:reply:<chan>   list    (key, value) pairs for one caller process, oldest first,
                               expiring with the longest TTL pushed to it

``put_result`` sets the result and pushes it to the caller's list in one MULTI/EXEC on a
single server. A caller process blocks on its own list with ``BLMPOP`` (one connection
for any number of concurrent calls), which takes up to a thousand results at once. On
Redis Cluster the two keys live in different slots, so the two writes are two commands: a
failure between them leaves the result readable by ``get_result`` but its caller not
woken (it reaches its deadline).
"""

from __future__ import annotations

import struct
from typing import Any

from ..base import check_result

__all__ = ["Results"]

_LEN = struct.Struct(">I")
_DRAIN = 1000  # results one pop takes at most


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

    def _client(self) -> Any:
        raise NotImplementedError  # supplied by ScriptCalls

    async def _command(self, op: str, *args: Any) -> Any:
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
        try:
            pipe = self._client().pipeline(transaction=True)
            pipe.execute_command("SET", rkey, value, "PX", ttl_ms)
            pipe.execute_command("RPUSH", lkey, _pack(key, value))
            # the list lives as long as the longest result in it (GT), or this one (NX)
            pipe.execute_command("PEXPIRE", lkey, ttl_ms, "GT")
            pipe.execute_command("PEXPIRE", lkey, ttl_ms, "NX")
            await pipe.execute()
        except Exception as exc:
            raise self._faults.error("storing a result", exc) from exc

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
