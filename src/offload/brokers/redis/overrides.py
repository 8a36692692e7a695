"""The Redis broker's retry overrides (:class:`~offload.brokers.overrides.RetryOverrides`):
the field ``retry`` of a queue's policy hash ``{P:Q}:q``, beside what ``declare`` writes
there (which never touches it); dropping the queue deletes the hash, and with it the
override. Plain commands, one key each, so they run unchanged on Redis Cluster."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ...core.policy import QueuePolicy, RetryPolicy
from ..overrides import decode_retry, encode_retry
from .scripts import QueueKeys

__all__ = ["Overrides"]

_FIELD = "retry"


class Overrides:
    """Mixin of :class:`.broker.RedisBroker` (which supplies the client, the keys and the
    error translation)."""

    _faults: Any

    def _client(self) -> Any:
        raise NotImplementedError  # supplied by ScriptCalls

    def _qkeys(self, queue: str) -> QueueKeys:
        raise NotImplementedError  # supplied by ScriptCalls

    async def _command(self, op: str, *args: Any) -> Any:
        raise NotImplementedError  # supplied by ScriptCalls

    async def _read(self, fn: Any) -> Any:
        raise NotImplementedError  # supplied by ScriptCalls

    async def set_retry_override(self, queue: str, retry: RetryPolicy | None) -> None:
        """Store (None: clear) ``queue``'s retry override: one HSET or HDEL."""
        QueuePolicy(queue)  # validates the name before any I/O
        key = self._qkeys(queue).keys[0]
        if retry is None:
            await self._command("clearing a retry override", "HDEL", key, _FIELD)
        else:
            text = encode_retry(retry)
            await self._command("storing a retry override", "HSET", key, _FIELD, text)

    async def retry_overrides(self, queues: Sequence[str]) -> dict[str, RetryPolicy]:
        """The stored overrides of ``queues`` (those that have one): one HGET per queue,
        pipelined (one round trip on a single server)."""
        names = list(dict.fromkeys(queues))
        if not names:
            return {}

        async def read() -> list:
            try:
                pipe = self._client().pipeline(transaction=False)
                for q in names:
                    pipe.execute_command("HGET", self._qkeys(q).keys[0], _FIELD)
                return await pipe.execute()
            except Exception as exc:
                raise self._faults.error("reading retry overrides", exc) from exc

        out = {}
        for q, stored in zip(names, await self._read(read), strict=True):
            retry = None if stored is None else decode_retry(stored)
            if retry is not None:
                out[q] = retry
        return out
