"""The SQLite broker's result store (:class:`~offload.brokers.base.ResultStore`).

A result is a row keyed by the task id with an expiry time; a caller's listener takes the
rows addressed to its reply channel (marking them delivered) and sleeps on the doorbell in
between, which ``put_result`` rings: the same wake-up as a worker's, no polling. Expired
rows are invisible at once and deleted by a ``put_result`` at most every few seconds per
broker, so the table never grows past what the TTLs allow. The table is part of the
schema (version 3, ``sql/migrate_3.sql``), made when the database is opened.
"""

from __future__ import annotations

import asyncio
import functools
import json
import sqlite3
import time
from typing import Any

from ..base import check_result
from .doorbell import Doorbell
from .queries import Queries, _read
from .store import Store

__all__ = ["Results"]

_SWEEP_EVERY = 5.0  # seconds between deletions of expired results by one broker
_POLL_WITHOUT_DOORBELL = 0.5  # seconds: only where unix sockets are missing


@functools.cache
def _queries() -> Queries:
    return Queries(_read("results.sql"))


class Results:
    """Mixin of :class:`.broker.SQLiteBroker` (which supplies ``_store``, ``_bell``,
    ``_waiters``, ``_ring`` and ``_wake_loop``)."""

    _store: Store
    _bell: Doorbell
    _waiters: set[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]]
    _results_swept = 0.0

    def _ring(self) -> None:
        raise NotImplementedError  # supplied by SQLiteBroker

    def _wake_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        raise NotImplementedError  # supplied by SQLiteBroker

    async def put_result(
        self, key: str, value: bytes, ttl: float, reply_to: str | None = None
    ) -> None:
        """Store ``value`` under ``key`` until ``ttl`` seconds from now; with ``reply_to``,
        ring the doorbell so that channel's listener takes it."""
        ttl = check_result(key, ttl, reply_to)
        self._store.require_open()
        sweep = time.time() - self._results_swept > _SWEEP_EVERY
        if sweep:
            self._results_swept = time.time()

        def put(conn: sqlite3.Connection, now: float) -> None:
            if sweep:
                conn.execute(_queries().sweep, {"now": now})
            params = {"key": key, "value": value, "expires_at": now + ttl, "reply_to": reply_to}
            conn.execute(_queries().put, params)

        self._store.write("storing a result", put)
        if reply_to is not None:
            self._ring()

    async def get_result(self, key: str) -> bytes | None:
        """The value under ``key``, or None when none is stored or it expired."""
        check_result(key, 1.0)
        self._store.require_open()

        def get(conn: sqlite3.Connection, now: float) -> bytes | None:
            row = conn.execute(_queries().get, {"key": key, "now": now}).fetchone()
            return None if row is None else bytes(row[0])

        return self._store.read("reading a result", get)

    def _take(self, reply_to: str) -> list[tuple[str, bytes]]:
        def take(conn: sqlite3.Connection, now: float) -> list[tuple[str, bytes]]:
            rows = conn.execute(_queries().delivered, {"reply_to": reply_to, "now": now}).fetchall()
            if rows:
                keys = json.dumps([k for k, _ in rows])
                conn.execute(_queries().mark_delivered, {"keys": keys})
            return [(k, bytes(v)) for k, v in rows]

        return self._store.write("taking results", take)

    async def wait_results(self, reply_to: str, timeout: float) -> list[tuple[str, bytes]]:
        """Take the results addressed to ``reply_to``; when there are none, sleep on the
        doorbell until one is stored or ``timeout`` seconds passed."""
        check_result("-", 1.0, reply_to)
        self._store.require_open()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(0.0, timeout)
        listening = self._bell.listen(loop, lambda: self._wake_loop(loop))
        entry: tuple[Any, asyncio.Future[None]] = (loop, loop.create_future())
        self._waiters.add(entry)  # before looking, so no ring after the look is missed
        try:
            while True:
                got = self._take(reply_to)
                remaining = deadline - loop.time()
                if got or remaining <= 0 or not self._store.opened:
                    return got
                nap = remaining if listening else min(remaining, _POLL_WITHOUT_DOORBELL)
                await asyncio.wait((entry[1],), timeout=nap)
                if entry[1].done():
                    self._waiters.discard(entry)
                    entry = (loop, loop.create_future())
                    self._waiters.add(entry)
        finally:
            self._waiters.discard(entry)
            entry[1].cancel()
