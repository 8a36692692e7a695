"""The PostgreSQL broker: ``postgresql://user:pass@host:5432/db?schema=offload``.

psycopg 3 (async) with a psycopg_pool ``AsyncConnectionPool``; every statement is a named
file under ``sql/queries/`` beside this module. The broker's clock is the server's
(``extract(epoch FROM clock_timestamp())``).

URL parameters of offload's own (the rest go to libpq unchanged, ``postgres://`` works too):

``schema`` (default ``offload``)
    every table lives in this schema, so two apps (or tests) can share one database. It is
    created and migrated on first open from ``sql/migrations/NNN_*.sql``, in one
    transaction under ``pg_advisory_xact_lock``, so concurrent openers are safe; the applied
    versions are in ``<schema>.schema_version``. ``schema.sql`` is the resulting snapshot.
``prepare_threshold`` (default psycopg's 5; ``none`` never prepares)
    after this many runs psycopg prepares a statement server-side. Behind PgBouncer in
    *transaction* mode older than 1.21 (or without ``max_prepared_statements``) use ``none``.
``listen_url``
    where the LISTEN connection goes. LISTEN is session state: it needs a direct connection
    or a pooler in *session* mode. Everything else the broker does is one statement or one
    explicit transaction with no session state, so the pool may go through a pooler in
    transaction mode (NOTIFY is sent at commit and works there).
``pool_min``, ``pool_max`` (1, 10), ``pool_timeout`` (10 s)
    pool size, and how long a call waits for a connection before raising
    :class:`~offload.errors.BrokerUnavailable`.

Design notes:

* **Claim** is one call of the ``claim`` function (migration ``005_claim_functions.sql``
  says what it does): it locks the rows of the queues with a rate or ``max_concurrent``
  (claimers of those take turns), then, in a statement of its own, takes the oldest due
  rows per queue ``FOR UPDATE SKIP LOCKED`` (ready, or leased with an expired lease),
  capped by the queue's tokens and free ``max_concurrent`` slots, shares them round-robin
  across queues, leases them and debits the bucket. Under READ COMMITTED a statement's
  snapshot is taken before it waits for a lock, so the count of leased tasks must be read
  by a statement that starts after the lock was granted: hence a function, whose
  statements each take a fresh snapshot. It was two statements in a pipeline; psycopg's
  client work per statement (about 100 µs of the worker's CPU) cost more than the rows.
  A handler thread's claim passes its acks too, acked first in the same transaction.
  An ack is one call of the ``ack`` function.
* **Enqueue**: one task without a name: ``enqueue_plain.sql``, a plain ``INSERT ...
  RETURNING pg_notify(...)``; one named task: ``enqueue_one.sql`` (plain parameters, the
  names CTE); a batch with names: ``enqueue.sql`` (parallel arrays through ``unnest``); a
  batch of 64 or more without names: ``COPY`` (``enqueue_copy.sql``, ~1.5x the unnest
  INSERT's rows/s at 1,000), then ``notify.sql``, in one transaction. Claims and acks
  commit with ``synchronous_commit = off`` (set LOCAL to their transaction): a claim lost in
  a server crash only makes its tasks claimable again, as when a worker dies, and a lost
  ack only runs a finished task again (at-least-once). Enqueue, retry and the rest wait
  for the WAL flush: what they return is durable. Every path is idempotent by
  id (``ON CONFLICT (id) DO NOTHING``; the COPY leaves out the ids ``copy_prepare.sql``
  found, and runs once more if a racing sender stored one meanwhile).
* **Names** (dedup): a ``names`` table keyed by (queue, name) whose ``expires_at`` is NULL
  while the task exists in any state and ``removal + dedup_window`` afterwards. Enqueue
  takes a name with ``INSERT ... ON CONFLICT DO UPDATE ... WHERE expires_at <= now``, whose
  row lock orders it against a racing ack of the same name. Idle workers delete expired
  rows now and then; an expired row is also reused in place.
* **Wake-ups**: see :mod:`.listen`. ``wait()`` also sleeps no longer than the next
  due time read from the tables (an eta, a lease expiry, the next token, or the first lease
  expiry of a saturated ``max_concurrent`` queue).
* **Transactional enqueue**: ``enqueue(tasks, connection=conn)`` with the application's own
  ``psycopg.AsyncConnection`` runs the same enqueue statements in the caller's transaction
  and does not commit: the tasks (and the NOTIFY) exist if and only if the caller commits.
  ``enqueue_blocking`` is its synchronous twin for a ``psycopg.Connection`` (or, without
  one, a lazily opened thread-safe sync pool that commits, one of whose connections is
  held for one-by-one sends: see :mod:`.sync`).
* **Failures** (:mod:`.failures`): a connection error raises ``BrokerUnavailable`` naming
  the server, a full server ``BrokerFull``, a request the server rejects (a NUL in text)
  ``BrokerRefused``; ``open()`` connects once directly so that a missing database or role
  raises ``BrokerURLError`` at once. The pool drops broken connections, and checks an idle
  connection's socket before handing it out, so a server restart or
  ``pg_terminate_backend`` costs at most one failed call.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool

from ...core.policy import QueuePolicy
from ...errors import BrokerError, BrokerRefused, ConfigError, OffloadError
from ..base import Capabilities, Claimed, Lease, NewTask, check_release_delay
from .admin import Admin
from .failures import connect_error, translate
from .inspection import Inspection
from .listen import Listener
from .overrides import Overrides
from .pool import give_back
from .queries import (
    LATEST_VERSION,
    PostgresConfig,
    by_copy,
    channel,
    copy_rows,
    created,
    enqueue_statement,
    queries,
)
from .queries import has_input as _has_input
from .results import Results
from .sync import SyncSide

__all__ = ["PostgresBroker"]

_GC_EVERY = 60.0  # seconds between expired-name clean-ups by one broker's idle wait()


def _lease_params(leases: Sequence[Lease]) -> dict[str, list[str]]:
    return {"ids": [x.id for x in leases], "tokens": [x.token for x in leases]}


class PostgresBroker(Admin, Inspection, Overrides, Results):
    """A broker on a PostgreSQL database (see the module docstring for the URL)."""

    capabilities = Capabilities(
        inline=False, transactional_enqueue=True, inspect=True, results=True
    )

    def __init__(self, url: str) -> None:
        self.url = url
        self.config = PostgresConfig.from_url(url)
        self._q = queries(self.config.schema)
        self._pool: AsyncConnectionPool | None = None
        self._listener: Listener | None = None
        self._open_lock = asyncio.Lock()
        self._sync = SyncSide(self.config, self._q, self._errors, self._check_version, self._where)
        self._last_gc = 0.0
        self._turn = 0

    def __repr__(self) -> str:
        return f"<PostgresBroker {self.config.where} schema={self.config.schema}>"

    # -- errors and connections ------------------------------------------------------------

    @property
    def _where(self) -> str:
        return f"{self.config.where} (schema {self.config.schema!r})"

    @contextlib.contextmanager
    def _errors(self, what: str) -> Iterator[None]:
        """Driver errors become offload's (see :mod:`.failures`); the rest pass."""
        try:
            yield
        except OffloadError:
            raise
        except Exception as exc:
            mapped = translate(exc, what, self._where)
            if mapped is exc:
                raise
            raise mapped from exc

    @contextlib.asynccontextmanager
    async def _conn(self, what: str) -> AsyncIterator[psycopg.AsyncConnection]:
        pool = self._opened()
        with self._errors(what):
            # getconn/putconn rather than pool.connection(): every statement here is
            # autocommit or its own transaction block, and this is the hot path
            conn = await pool.getconn()
            try:
                yield conn
            finally:
                await give_back(pool, conn)  # not pool.putconn: see .pool

    def _opened(self) -> AsyncConnectionPool:
        if self._pool is None:
            raise BrokerError(
                f"PostgreSQL broker {self.config.where} (schema {self.config.schema!r}) is not "
                "open: call open() first"
            )
        return self._pool

    async def _one(self, what: str, sql: str, params: dict[str, Any] | None = None) -> Any:
        async with self._conn(what) as conn:
            cur = await conn.execute(sql, params)
            return await cur.fetchone()

    async def _exec(self, what: str, sql: str, params: dict[str, Any] | None = None) -> None:
        async with self._conn(what) as conn:
            await conn.execute(sql, params)

    async def _all(self, what: str, sql: str, params: dict[str, Any] | None = None) -> list:
        async with self._conn(what) as conn:
            cur = await conn.execute(sql, params)
            return await cur.fetchall()

    @staticmethod
    async def _check(conn: psycopg.AsyncConnection) -> None:
        # An idle connection has nothing to read; if its socket is readable the server sent
        # a FATAL (pg_terminate_backend, restart) or closed it. Only then pay a round trip.
        if conn.closed or _has_input(conn.pgconn.socket):
            await AsyncConnectionPool.check_connection(conn)

    def _pool_kwargs(self) -> dict[str, Any]:
        return {"autocommit": True, "prepare_threshold": self.config.prepare_threshold}

    # -- life cycle -----------------------------------------------------------------------

    async def open(self) -> None:
        """Connect, create or migrate the schema, and open the pool. Idempotent.

        The first connection is made directly, not by the pool (whose workers retry in the
        background until ``pool_timeout``), so that a database or role the server does not
        have, or a wrong password, raises :class:`~offload.errors.BrokerURLError` at once,
        and an unreachable server :class:`~offload.errors.BrokerUnavailable`.
        """
        async with self._open_lock:
            if self._pool is not None:
                return
            cfg = self.config
            try:
                conn = await psycopg.AsyncConnection.connect(
                    cfg.conninfo, autocommit=True, connect_timeout=cfg.connect_timeout
                )
            except Exception as exc:
                raise connect_error(exc, cfg.where, self._where) from exc
            try:
                with self._errors("migrating the schema"):
                    await self._migrate(conn)
            finally:
                await conn.close()
            pool = AsyncConnectionPool(
                cfg.conninfo,
                min_size=cfg.pool_min,
                max_size=cfg.pool_max,
                timeout=cfg.pool_timeout,
                kwargs=self._pool_kwargs(),
                check=self._check,
                open=False,
                name=f"offload-{cfg.schema}",
            )
            try:
                with self._errors("connecting"):
                    await pool.open(wait=cfg.pool_min > 0, timeout=cfg.pool_timeout)
            except BaseException:
                await pool.close()
                raise
            self._pool = pool
            self._sync.migrated = True

    async def close(self) -> None:
        """Close the pool and the LISTEN connections. Leased tasks stay leased."""
        await self._close_results()
        if self._listener is not None:
            await self._listener.stop()
            self._listener = None
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()
        await asyncio.to_thread(self._sync.close)

    async def _migrate(self, conn: psycopg.AsyncConnection) -> None:
        q = self._q
        try:
            version = (await (await conn.execute(q.version)).fetchone())[0]
        except psycopg.errors.UndefinedTable:
            version = 0
        if version == LATEST_VERSION:
            return
        async with conn.transaction():
            await conn.execute(q.bootstrap)  # takes the advisory lock first
            version = (await (await conn.execute(q.version)).fetchone())[0]
            self._check_version(version)
            for v, sql in q.migrations[version:]:
                await conn.execute(sql)
                await conn.execute(q.record_version, (v,))

    def _check_version(self, version: int) -> None:
        if version > LATEST_VERSION:
            raise BrokerError(
                f"PostgreSQL schema {self.config.schema!r} at {self.config.where} is at version "
                f"{version}, newer than this offload understands ({LATEST_VERSION}): upgrade "
                "offload on this machine"
            )

    # -- queues -----------------------------------------------------------------------------

    async def declare(self, policies: Sequence[QueuePolicy]) -> None:
        if not policies:
            return
        last = {p.name: p for p in policies}  # the last writer wins within a batch, too
        ps = [last[name] for name in sorted(last)]
        params = {
            "names": [p.name for p in ps],
            "rates": [p.rate for p in ps],
            "buckets": [p.bucket for p in ps],
            "max_concurrents": [p.max_concurrent for p in ps],
            "leases": [p.lease for p in ps],
            "dedup_windows": [p.dedup_window for p in ps],
        }
        await self._all("declaring queues", self._q.declare, params)

    async def set_paused(self, queue: str, paused: bool) -> None:
        await self._all(
            "pausing a queue", self._q.set_paused, {"queue": queue, "paused": bool(paused)}
        )

    # -- tasks ------------------------------------------------------------------------------

    async def enqueue(
        self, tasks: Sequence[NewTask], *, connection: psycopg.AsyncConnection | None = None
    ) -> list[bool]:
        """Store tasks durably; per task, True when created or when a task with its id
        exists already (left as it is), False for a duplicate name.

        With ``connection`` (the application's own ``psycopg.AsyncConnection``) the insert
        runs in the caller's transaction and nothing is committed here: the tasks exist, and
        workers are notified, only if the caller commits.
        """
        if not tasks:
            return []
        if connection is None:
            if by_copy(tasks):
                return await self._enqueue_copy(tasks)
            async with self._conn("enqueueing") as conn:
                return await self._insert(conn, tasks)
        if not isinstance(connection, psycopg.AsyncConnection):
            raise ConfigError(
                f"enqueue(connection={connection!r}): pass a psycopg.AsyncConnection "
                "(use enqueue_blocking for a sync psycopg.Connection)"
            )
        self._opened()
        # no transaction() here: that would commit on the caller's behalf
        with self._errors("enqueueing in the caller's transaction"):
            if by_copy(tasks):
                return await self._copy(connection, tasks)
            return await self._insert(connection, tasks)

    async def _insert(self, conn: psycopg.AsyncConnection, tasks: Sequence[NewTask]) -> list:
        sql, params = enqueue_statement(self._q, tasks)
        cur = await conn.execute(sql, params)
        return created(tasks, await cur.fetchall())

    async def _enqueue_copy(self, tasks: Sequence[NewTask]) -> list[bool]:
        for last in (False, True):
            try:
                async with self._conn("enqueueing") as conn, conn.transaction():
                    return await self._copy(conn, tasks)
            except BrokerRefused as exc:
                # a racing sender stored one of these ids between copy_prepare and the
                # COPY, so all of it rolled back; once more, copy_prepare now sees that id
                if last or not isinstance(exc.__cause__, psycopg.errors.UniqueViolation):
                    raise
        raise AssertionError("unreachable")

    async def _copy(self, conn: psycopg.AsyncConnection, tasks: Sequence[NewTask]) -> list:
        q = self._q
        cur = await conn.execute(q.copy_prepare, {"ids": [t.id for t in tasks]})
        now, known = await cur.fetchone()
        rows, queues = copy_rows(tasks, now, known)
        if rows:
            async with conn.cursor().copy(q.enqueue_copy) as copy:
                for row in rows:
                    await copy.write_row(row)
            await conn.execute(q.notify, {"queues": queues})
        return [True] * len(tasks)

    def enqueue_blocking(
        self, tasks: Sequence[NewTask], *, connection: psycopg.Connection | None = None
    ) -> list[bool]:
        """The synchronous twin of :meth:`enqueue` (the same statements), safe from any
        thread and usable without open().

        With ``connection`` (the application's own ``psycopg.Connection``) it runs in the
        caller's transaction without committing; without one it uses the broker's own sync
        pool, opened (and the schema migrated) on first use, and is durable when it returns.
        """
        return self._sync.enqueue(tasks, connection)

    async def claim(self, queues: Sequence[str], limit: int) -> list[Claimed]:
        if limit <= 0 or not queues:
            return []
        self._turn += 1  # which queue goes first in this claim's round-robin
        params = {
            "queues": list(dict.fromkeys(queues)),
            "limit": int(limit),
            "turn": self._turn,
            "acks": [],
        }
        async with self._conn("claiming") as conn:
            cur = await conn.execute(self._q.claim, params, binary=True)  # see _claims
            rows = await cur.fetchall()
        return _claims(rows)

    def claim_blocking(
        self, queues: Sequence[str], limit: int, acks: Sequence[Lease] = ()
    ) -> list[Claimed]:
        """:meth:`ack` then :meth:`claim` from a worker's handler thread
        (``BlockingClaim``): the same statement, given the acks, on the synchronous pool."""
        if (limit <= 0 or not queues) and not acks:
            return []
        self._turn += 1
        params = {
            "queues": list(dict.fromkeys(queues)),
            "limit": max(0, int(limit)),
            "turn": self._turn,
        }
        return _claims(self._sync.claim(params, [x.id for x in acks]))

    async def ack(self, leases: Sequence[Lease]) -> None:
        """Remove finished tasks whatever their state and token (a finished run wins)."""
        # Acks commit without waiting for the WAL flush, like claims: an ack lost in a
        # server crash only runs a finished task again (at-least-once), and a worker's
        # claim+ack cycle stops paying a disk flush per batch.
        if not leases:
            return
        async with self._conn("acking") as conn:
            await conn.execute(self._q.ack, {"ids": [x.id for x in leases]})

    async def retry(self, lease: Lease, delay: float, error: str) -> bool:
        params = {"id": lease.id, "token": lease.token, "delay": float(delay), "error": error}
        return await self._one("retrying", self._q.retry, params) is not None

    async def release(self, leases: Sequence[Lease], delay: float = 0.0) -> None:
        """Give tasks back uncounted, claimable after ``delay`` seconds (broker clock)."""
        params = {**_lease_params(leases), "delay": check_release_delay(delay)}
        if leases:
            await self._all("releasing", self._q.release, params)

    async def dead_letter(self, lease: Lease, error: str, traceback: str) -> bool:
        params = {"id": lease.id, "token": lease.token, "error": error, "traceback": traceback}
        return await self._one("dead-lettering", self._q.dead_letter, params) is not None

    async def extend(self, leases: Sequence[Lease]) -> list[float | None]:
        """Renew leases; per lease, the lease length applied (the queue's stored lease),
        or None when it is no longer held."""
        if not leases:
            return []
        params = {**_lease_params(leases), "queues": [x.queue for x in leases]}
        rows = await self._all("extending leases", self._q.extend, params)
        applied = {(r[0], r[1]): r[2] for r in rows}
        return [applied.get((x.id, x.token)) for x in leases]

    async def wait(self, queues: Sequence[str], timeout: float) -> None:
        """Block until a task of ``queues`` may be claimable, or ``timeout`` seconds.

        Wakes on a NOTIFY from any process, and at the next due time read from the tables.
        """
        if timeout <= 0 or not queues:
            return
        listener = await self._listening()
        entry = listener.register(frozenset(queues))
        try:
            row = await self._one("waiting", self._q.next_due, {"queues": list(queues)})
            due = row[0] if row else None
            if due is not None and due <= 0:
                return
            if time.monotonic() - self._last_gc > _GC_EVERY:
                self._last_gc = time.monotonic()
                await self._exec("forgetting expired names", self._q.gc_names)
            budget = timeout if due is None else min(timeout, due + 0.001)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(entry[1].wait(), budget)
        finally:
            listener.unregister(entry)

    async def _listening(self) -> Listener:
        self._opened()
        if self._listener is None:
            self._listener = Listener(self.config.listen_conninfo, channel(self.config.schema))
        if not self._listener.alive:
            with self._errors("listening for new tasks"):
                await self._listener.start()
        return self._listener


def _claims(rows: list) -> list[Claimed]:
    """claim.sql's rows, in binary (half the client's work per row of text: no bytea hex
    or float parsing), their columns in ``Claimed``'s order (the test of claims checks
    every field)."""
    return [Claimed(*r) for r in rows]
