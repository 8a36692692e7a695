"""The PostgreSQL broker's synchronous side: ``enqueue_blocking`` for the App's sync facade.

It runs the very statements of the async broker (:func:`.queries.enqueue_statement`,
``enqueue_copy.sql``, ``now.sql``, ``notify.sql`` and the migrations), on either the
application's own ``psycopg.Connection`` (inside the caller's transaction, never committed
here) or a sync ``ConnectionPool`` opened on first use, thread-safe, that commits.

The usual producer is one thread sending one task at a time, where a pool checkout per send
(and a cursor per statement) is a noticeable share of the call. So one connection of the
pool is *held*: taken out once and kept, with its cursor, behind a lock. A send that finds
the lock free uses it; one that finds it taken (another thread is sending) goes through the
pool as before, so concurrent producers never queue behind each other. The held connection
gets the pool's own health check before each use (its socket is readable only if the server
sent a FATAL or closed it; then it is handed back and another taken), is handed back if a
statement leaves it broken or not idle, or once it is older than the pool's ``max_lifetime``
(so the pool's rotation still applies), and goes back to the pool on :meth:`SyncSide.close`.
"""

from __future__ import annotations

import select
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager

import psycopg
from psycopg.pq import TransactionStatus
from psycopg_pool import ConnectionPool, PoolTimeout

from ...errors import ConfigError
from ..base import NewTask
from .failures import connect_error
from .queries import (
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

_IDLE = TransactionStatus.IDLE
_READABLE = select.POLLIN | select.POLLERR | select.POLLHUP


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
        where: str,
    ) -> None:
        self._config = config
        self._where = where  # the server and schema, for messages
        self._q = q
        self._errors = errors
        self._check_version = check_version
        self._lock = threading.Lock()
        self._pool: ConnectionPool | None = None
        # the held connection (see the module docstring); the rest only under _held_lock
        self._held_lock = threading.Lock()
        self._held: psycopg.Connection | None = None
        self._held_cur: psycopg.Cursor | None = None
        self._held_poll: select.poll | None = None
        self._held_pool: ConnectionPool | None = None
        self._held_until = 0.0  # time.monotonic() after which it goes back to the pool
        #: set once the schema is known to be current (by either side)
        self.migrated = False

    def enqueue(
        self, tasks: Sequence[NewTask], connection: psycopg.Connection | None
    ) -> list[bool]:
        if not tasks:
            return []
        if connection is not None:
            if not isinstance(connection, psycopg.Connection):
                raise ConfigError(
                    f"enqueue_blocking(connection={connection!r}): pass a psycopg.Connection "
                    "(use enqueue for a psycopg.AsyncConnection)"
                )
            self._open()  # the schema must exist before the caller's transaction uses it
            with self._errors("enqueueing"):
                return self._run(connection, tasks)
        pool = self._pool or self._open()
        for last in (not by_copy(tasks), True):
            try:
                return self._send(pool, tasks)
            except psycopg.errors.UniqueViolation:
                # a racing sender stored one of a COPY batch's ids after copy_prepare read
                # them, so all of it rolled back; once more, copy_prepare now sees that id
                if not last:
                    continue
                with self._errors("enqueueing"):
                    raise
            except Exception:
                # mapped here, not by a with-block around the call: a generator per send
                with self._errors("enqueueing"):
                    raise
        raise AssertionError("unreachable: _errors re-raises what it does not map")

    def claim(self, params: dict, acks: list[str]) -> list[tuple]:
        """The worker's ack and claim from a handler thread: one call of the claim
        function (``PostgresBroker.claim``'s statement) with the acks, on a pooled
        connection."""
        pool = self._pool or self._open()
        with self._errors("claiming"), pool.connection() as conn:
            cur = conn.execute(self._q.claim, {**params, "acks": acks}, binary=True)
            return cur.fetchall()

    def _send(self, pool: ConnectionPool, tasks: Sequence[NewTask]) -> list[bool]:
        if self._take_held():
            try:
                return self._run_held(pool, tasks)
            finally:
                self._held_lock.release()
        with pool.connection() as conn:
            if by_copy(tasks):
                with conn.transaction():
                    return self._run(conn, tasks)
            return self._run(conn, tasks)

    def _take_held(self) -> bool:
        """Acquire the held connection's lock: at once or not at all, unless the pool has a
        single connection, which the held one then is (wait for it as for the pool)."""
        cfg = self._config
        if cfg.pool_max > 1:
            return self._held_lock.acquire(blocking=False)
        if self._held_lock.acquire(timeout=cfg.pool_timeout):
            return True
        raise PoolTimeout(f"couldn't get a connection after {cfg.pool_timeout:.2f} sec")

    def _run_held(self, pool: ConnectionPool, tasks: Sequence[NewTask]) -> list[bool]:
        """Enqueue on the held connection (its lock is ours), replacing it when unhealthy."""
        conn, cur, poll = self._held, self._held_cur, self._held_poll
        if (
            conn is None
            or cur is None
            or poll is None
            or conn.closed
            or poll.poll(0)
            or time.monotonic() >= self._held_until
        ):
            conn, cur = self._replace_held(pool)
        try:
            if by_copy(tasks):
                with conn.transaction():
                    return self._run(conn, tasks)
            sql, params = enqueue_statement(self._q, tasks)
            cur.execute(sql, params)
            return created(tasks, cur.fetchall())
        except BaseException:
            # a lost server, or an interrupt mid-statement: never reuse such a connection
            if conn.broken or conn.closed or conn.info.transaction_status != _IDLE:
                self._release_held()
            raise

    def _replace_held(self, pool: ConnectionPool) -> tuple[psycopg.Connection, psycopg.Cursor]:
        # The old one goes back to the pool, which drops it if broken or expired and
        # otherwise checks it on its next checkout, as for any connection; getconn runs that
        # check.
        self._release_held()
        conn = pool.getconn()
        cur = conn.cursor()
        poll = select.poll()
        poll.register(conn.pgconn.socket, _READABLE)
        self._held, self._held_cur, self._held_poll, self._held_pool = conn, cur, poll, pool
        self._held_until = time.monotonic() + pool.max_lifetime
        return conn, cur

    def _release_held(self) -> None:
        conn, pool = self._held, self._held_pool
        self._held = self._held_cur = self._held_poll = self._held_pool = None
        if conn is None or pool is None:
            return
        try:
            pool.putconn(conn)
        except Exception:  # its pool is already closed: just close it
            conn.close()

    def _run(self, conn: psycopg.Connection, tasks: Sequence[NewTask]) -> list[bool]:
        """PostgresBroker._insert and ._copy, blocking: the same statements."""
        q = self._q
        if not by_copy(tasks):
            sql, params = enqueue_statement(q, tasks)
            return created(tasks, conn.execute(sql, params).fetchall())
        now, known = conn.execute(q.copy_prepare, {"ids": [t.id for t in tasks]}).fetchone()
        rows, queues = copy_rows(tasks, now, known)
        if rows:
            with conn.cursor().copy(q.enqueue_copy) as copy:
                for row in rows:
                    copy.write_row(row)
            conn.execute(q.notify, {"queues": queues})
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
            if not self.migrated:
                # a direct connection, as PostgresBroker.open: a missing database or role
                # fails at once with BrokerURLError instead of after pool_timeout
                try:
                    conn = psycopg.connect(
                        cfg.conninfo, autocommit=True, connect_timeout=cfg.connect_timeout
                    )
                except Exception as exc:
                    raise connect_error(exc, cfg.where, self._where) from exc
                try:
                    with self._errors("migrating the schema"):
                        self._migrate(conn)
                finally:
                    conn.close()
                self.migrated = True
            try:
                with self._errors("connecting"):
                    pool.open(wait=False)
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
        """Hand the held connection back and close the pool; waits for a send in flight on
        the held connection. A later send opens a new pool."""
        with self._lock:
            pool, self._pool = self._pool, None
        with self._held_lock:
            self._release_held()
        if pool is not None:
            pool.close()
