"""The PostgreSQL broker's result store (:class:`~offload.brokers.base.ResultStore`).

A result is a row of ``<schema>.results`` keyed by the task id, with an expiry time on the
server's clock; ``put.sql`` stores it and, in the same statement, NOTIFYs the caller's
channel (``offload-r-<reply_to>``) with its key. A caller process holds one LISTEN
connection of its own for its channel (apart from the workers' wake-up listener), reads
the keys it is notified of (the first one waited for, the rest polled: no wait for more),
and fetches their values in one query. Expired rows are
invisible at once and deleted a thousand at a time by ``put_result`` every few seconds.
The SQL is in ``sql/results/``; the table is part of the schema (migration 003).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from functools import cache
from typing import Any

import psycopg

from ..base import check_result
from .queries import _read, fill

__all__ = ["Results"]

_SWEEP_EVERY = 5.0  # seconds between sweeps of expired results by one broker
_DRAIN = 1000  # notifications read after the first without waiting


@cache
def _sql(schema: str) -> dict[str, str]:
    names = ("put", "get", "take", "sweep")
    return {n: fill(_read("results", f"{n}.sql"), schema) for n in names}


def reply_channel(reply_to: str) -> str:
    """The NOTIFY channel of one caller process (an identifier under 64 bytes)."""
    return f"offload-r-{reply_to}"


class Results:
    """Mixin of :class:`.broker.PostgresBroker` (which supplies ``config``, ``_errors``,
    ``_conn`` and ``_opened``)."""

    config: Any
    _errors: Callable[[str], contextlib.AbstractContextManager[None]]
    _results_swept = 0.0
    _results_conn: psycopg.AsyncConnection | None = None
    _results_channel: str | None = None

    def _conn(self, what: str) -> contextlib.AbstractAsyncContextManager[Any]:
        raise NotImplementedError  # supplied by PostgresBroker

    def _opened(self) -> Any:
        raise NotImplementedError  # supplied by PostgresBroker

    def _results_sql(self) -> dict[str, str]:
        return _sql(self.config.schema)

    async def put_result(
        self, key: str, value: bytes, ttl: float, reply_to: str | None = None
    ) -> None:
        """Store the result and NOTIFY ``reply_to``'s channel, in one statement."""
        ttl = check_result(key, ttl, reply_to)
        sql = self._results_sql()
        chan = None if reply_to is None else reply_channel(reply_to)
        params = {"key": key, "value": value, "ttl": ttl, "channel": chan}
        async with self._conn("storing a result") as conn:
            await conn.execute(sql["put"], params)
            if time.monotonic() - self._results_swept > _SWEEP_EVERY:
                self._results_swept = time.monotonic()
                await conn.execute(sql["sweep"])

    async def get_result(self, key: str) -> bytes | None:
        """The stored result, or None when there is none or it expired."""
        check_result(key, 1.0)
        async with self._conn("reading a result") as conn:
            row = await (await conn.execute(self._results_sql()["get"], {"key": key})).fetchone()
        return None if row is None else bytes(row[0])

    async def wait_results(self, reply_to: str, timeout: float) -> list[tuple[str, bytes]]:
        """LISTEN on ``reply_to``'s channel (once), wait up to ``timeout`` seconds for a
        notification, read whatever else arrived, and fetch those results."""
        check_result("-", 1.0, reply_to)
        self._opened()
        conn = await self._results_listener(reply_to)
        keys: list[str] = []
        with self._errors("waiting for results"):
            try:
                if timeout > 0:
                    async for note in conn.notifies(timeout=timeout, stop_after=1):
                        keys.append(note.payload)
                if keys or timeout <= 0:  # what else has arrived: a poll, no wait
                    async for note in conn.notifies(timeout=0.0, stop_after=_DRAIN):
                        keys.append(note.payload)
            except BaseException:
                await self._close_results()  # a half-read connection is not reused
                raise
        if not keys:
            return []
        # Not on the listening connection: a notification read with a query's reply can
        # stay queued in libpq, unseen by the next wait, until another one arrives.
        async with self._conn("taking results") as c:
            cur = await c.execute(self._results_sql()["take"], {"keys": keys})
            found = {k: bytes(v) for k, v in await cur.fetchall()}
        return [(k, found[k]) for k in dict.fromkeys(keys) if k in found]

    async def _results_listener(self, reply_to: str) -> psycopg.AsyncConnection:
        conn = self._results_conn
        if conn is not None and not conn.closed and self._results_channel == reply_to:
            return conn
        await self._close_results()
        with self._errors("listening for results"):
            conn = await psycopg.AsyncConnection.connect(
                self.config.listen_conninfo, autocommit=True
            )
            try:
                await conn.execute(f'LISTEN "{reply_channel(reply_to)}"')
            except BaseException:
                await conn.close()
                raise
        self._results_conn, self._results_channel = conn, reply_to
        return conn

    async def _close_results(self) -> None:
        conn, self._results_conn = self._results_conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.close()
