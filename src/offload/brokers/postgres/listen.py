"""The PostgreSQL broker's wake-ups: one LISTEN connection per broker, many waiters.

Enqueue, retry, release, requeue, resume and declare send ``NOTIFY`` on the schema's
channel with the queue name as payload (ack, delete and dead-letter too, for queues with
``max_concurrent``: a slot came free). A reader task owned by the broker reads them and sets
the event of every waiter whose queues include the payload. A waiter registers *before* it
reads the next due time from the table, so no notification can slip between the two.

LISTEN is session state: this connection must reach PostgreSQL directly or through a pooler
in session mode (``?listen_url=``), even when the pool goes through a transaction-mode one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import psycopg

__all__ = ["Listener"]

log = logging.getLogger("offload.brokers.postgres")


class Listener:
    """A LISTEN connection and the reader task that dispatches its notifications."""

    def __init__(self, conninfo: str, channel: str) -> None:
        self._conninfo = conninfo
        self._channel = channel
        self._conn: psycopg.AsyncConnection | None = None
        self._reader: asyncio.Task[None] | None = None
        self._waiters: set[tuple[frozenset[str], asyncio.Event]] = set()

    @property
    def alive(self) -> bool:
        return self._reader is not None and not self._reader.done()

    async def start(self) -> None:
        """Connect and LISTEN; raises psycopg's error when the server cannot be reached."""
        await self.stop()
        conn = await psycopg.AsyncConnection.connect(self._conninfo, autocommit=True)
        try:
            await conn.execute(f'LISTEN "{self._channel}"')
        except BaseException:
            await conn.close()
            raise
        self._conn = conn
        self._reader = asyncio.create_task(self._read(conn), name="offload-pg-listen")

    async def stop(self) -> None:
        reader, conn = self._reader, self._conn
        self._reader = self._conn = None
        if reader is not None:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.close()
        self._wake_all()

    def register(self, queues: frozenset[str]) -> tuple[frozenset[str], asyncio.Event]:
        entry = (queues, asyncio.Event())
        self._waiters.add(entry)
        return entry

    def unregister(self, entry: tuple[frozenset[str], asyncio.Event]) -> None:
        self._waiters.discard(entry)

    def _wake_all(self) -> None:
        for _, event in self._waiters:
            event.set()

    async def _read(self, conn: psycopg.AsyncConnection) -> None:
        try:
            async for note in conn.notifies():
                for queues, event in self._waiters:
                    if note.payload in queues:
                        event.set()
        except psycopg.Error as exc:
            # the next wait() reconnects (or raises BrokerUnavailable); wake everyone now
            # so that workers go and find out
            log.warning("offload: PostgreSQL LISTEN connection lost (%s); reconnecting", exc)
        finally:
            self._wake_all()
