"""The PostgreSQL broker's retry overrides
(:class:`~offload.brokers.overrides.RetryOverrides`): the ``queues.retry`` column of
migration 4, each call one statement from ``sql/overrides/``."""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache
from typing import Any

from ...core.policy import QueuePolicy, RetryPolicy
from ..overrides import decode_retry, encode_retry
from .queries import _read, fill

__all__ = ["Overrides"]


@cache
def _statement(schema: str, name: str) -> str:
    return fill(_read("overrides", f"{name}.sql"), schema)


class Overrides:
    """Mixin of :class:`.broker.PostgresBroker` (which supplies ``_exec``, ``_all`` and
    the schema in ``config``)."""

    config: Any

    async def _exec(self, what: str, sql: str, params: dict[str, Any] | None = None) -> None:
        raise NotImplementedError  # supplied by PostgresBroker

    async def _all(self, what: str, sql: str, params: dict[str, Any] | None = None) -> list:
        raise NotImplementedError  # supplied by PostgresBroker

    async def set_retry_override(self, queue: str, retry: RetryPolicy | None) -> None:
        """Store (None: clear) ``queue``'s retry override."""
        QueuePolicy(queue)  # validates the name before any I/O
        sql = _statement(self.config.schema, "set_retry")
        params = {"queue": queue, "retry": None if retry is None else encode_retry(retry)}
        await self._exec("storing a retry override", sql, params)

    async def retry_overrides(self, queues: Sequence[str]) -> dict[str, RetryPolicy]:
        """The stored overrides of ``queues`` (those that have one), in one statement."""
        if not queues:
            return {}
        sql = _statement(self.config.schema, "retry_overrides")
        rows = await self._all("reading retry overrides", sql, {"queues": list(queues)})
        out = {}
        for name, stored in rows:
            retry = decode_retry(stored)
            if retry is not None:
                out[name] = retry
        return out
