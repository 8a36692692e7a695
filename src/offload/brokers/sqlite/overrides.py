"""The SQLite broker's retry overrides (:class:`~offload.brokers.overrides.RetryOverrides`):
the ``queues.retry`` column of schema version 4, SQL in ``sql/overrides.sql``."""

from __future__ import annotations

import functools
import json
import sqlite3
from collections.abc import Sequence

from ...core.policy import QueuePolicy, RetryPolicy
from ..overrides import decode_retry, encode_retry
from .queries import Queries, _read
from .store import Store

__all__ = ["Overrides"]

_DEFAULTS = QueuePolicy("default")  # what a row made here for an undeclared queue holds


@functools.cache
def _queries() -> Queries:
    return Queries(_read("overrides.sql"))


class Overrides:
    """Mixin of :class:`.broker.SQLiteBroker` (which supplies ``_store``)."""

    _store: Store

    async def set_retry_override(self, queue: str, retry: RetryPolicy | None) -> None:
        """Store (None: clear) ``queue``'s retry override, in one transaction."""
        self._store.require_open()
        QueuePolicy(queue)  # validates the name
        params = {
            "name": queue,
            "lease": _DEFAULTS.lease,
            "dedup_window": _DEFAULTS.dedup_window,
            "retry": None if retry is None else encode_retry(retry),
        }
        self._store.write(
            "set_retry_override", lambda conn, now: conn.execute(_queries().set_retry, params)
        )

    async def retry_overrides(self, queues: Sequence[str]) -> dict[str, RetryPolicy]:
        """The stored overrides of ``queues`` (those that have one)."""
        names = json.dumps(list(queues))

        def read(conn: sqlite3.Connection, now: float) -> list[tuple[str, str]]:
            return conn.execute(_queries().retry_overrides, (names,)).fetchall()

        out = {}
        for name, stored in self._store.read("retry_overrides", read):
            retry = decode_retry(stored)
            if retry is not None:
                out[name] = retry
        return out
