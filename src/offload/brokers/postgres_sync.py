"""The PostgreSQL broker's synchronous side: ``enqueue_blocking`` for the App's sync facade.

It runs the very statements of the async broker (:func:`.postgres_sql.enqueue_statement`,
``enqueue_copy.sql``, ``now.sql``, ``notify.sql`` and the migrations), on either the
application's own ``psycopg.Connection`` (inside the caller's transaction, never committed
here) or a sync ``ConnectionPool`` opened on first use, thread-safe, that commits.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager

import psycopg
from psycopg_pool import ConnectionPool

from ..errors import ConfigError
from .base import NewTask
from .postgres_sql import (
    LATEST_VERSION,
    PostgresConfig,
    Queries,
    by_copy,
    copy_rows,
    created,
    enqueue_statement,
    has_input,
)

__all__ = ["SyncSide"]


def _check(conn: psycopg.Connection) -> None:
    # as PostgresBroker._check: a round trip only when the idle socket has something to say
    if conn.closed or has_input(conn.pgconn.socket):
        ConnectionPool.check_connection(conn)


class SyncSide:
    """Lazily opened sync pool plus the blocking enqueue; owned by one PostgresBroker."""

    def __init__(
        self,
        config: PostgresConfig,
        q: Queries,
        errors: Callable[[str], AbstractContextManager[None]],
        check_version: Callable[[int], None],
    ) -> None:
        self._config = config
        self._q = q
        self._errors = errors
        self._check_version = check_version
        self._lock = threading.Lock()
        self._pool: ConnectionPool | None = None
        #: set once the schema is known to be current (by either side)
        self.migrated = False

    def enqueue(
        self, tasks: Sequence[NewTask], connection: psycopg.Connection | None
    ) -> list[bool]:
        if not tasks:
            return []
        if connection is not None and not isinstance(connection, psycopg.Connection):
            raise ConfigError(
                f"enqueue_blocking(connection={connection!r}): pass a psycopg.Connection "
                "(use enqueue for a psycopg.AsyncConnection)"
            )
        pool = self._open()
        with self._errors("enqueueing"):
            if connection is not None:
                return self._run(connection, tasks)
            with pool.connection() as conn:
                if by_copy(tasks):
                    with conn.transaction():
                        return self._run(conn, tasks)
                return self._run(conn, tasks)

    def _run(self, conn: psycopg.Connection, tasks: Sequence[NewTask]) -> list[bool]:
        """PostgresBroker._insert and ._copy, blocking: the same statements."""
        q = self._q
        if not by_copy(tasks):
            sql, params = enqueue_statement(q, tasks)
            return created(tasks, conn.execute(sql, params).fetchall())
        now = conn.execute(q.now).fetchone()[0]
        with conn.cursor().copy(q.enqueue_copy) as copy:
            for row in copy_rows(tasks, now):
                copy.write_row(row)
        conn.execute(q.notify, {"queues": sorted({t.queue for t in tasks})})
        return [True] * len(tasks)

    def _open(self) -> ConnectionPool:
        with self._lock:
            if self._pool is not None:
                return self._pool
            cfg = self._config
            pool = ConnectionPool(
                cfg.conninfo,
                min_size=0,
                max_size=cfg.pool_max,
                timeout=cfg.pool_timeout,
                kwargs={"autocommit": True, "prepare_threshold": cfg.prepare_threshold},
                check=_check,
                open=False,
                name=f"offload-{cfg.schema}-sync",
            )
            try:
                with self._errors("connecting"):
                    pool.open(wait=False)
                    if not self.migrated:
                        with pool.connection() as conn:
                            self._migrate(conn)
                        self.migrated = True
            except BaseException:
                pool.close()
                raise
            self._pool = pool
            return pool

    def _migrate(self, conn: psycopg.Connection) -> None:
        """The steps of PostgresBroker._migrate, blocking."""
        q = self._q
        try:
            version = conn.execute(q.version).fetchone()[0]
        except psycopg.errors.UndefinedTable:
            version = 0
        if version == LATEST_VERSION:
            return
        with conn.transaction():
            conn.execute(q.bootstrap)
            version = conn.execute(q.version).fetchone()[0]
            self._check_version(version)
            for v, sql in q.migrations[version:]:
                conn.execute(sql)
                conn.execute(q.record_version, (v,))

    def close(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.close()
