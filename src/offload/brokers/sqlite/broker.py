"""The SQLite broker: one database file on one machine, nothing to install or run.

``sqlite:///relative.db`` or ``sqlite:////absolute/path.db``; options ``?synchronous=``
``normal`` (default) or ``full``, and ``?busy_timeout=`` milliseconds (default 5000).

Several worker processes on the same machine share the file safely: the database runs in
WAL mode (readers never block the writer), every operation is one transaction
(``BEGIN IMMEDIATE`` for writes, so the write lock is taken before anything is read) and
every time comes from the host clock read inside that transaction. Network file systems
are not supported (SQLite's locking does not work there); use Postgres or Redis to span
machines.

Durability. Every write has committed when its coroutine returns. With the default
``synchronous=normal`` a committed enqueue survives the crash or kill of any process, but
the last commits (up to the next checkpoint) can be lost if the *machine* loses power or
the kernel crashes: WAL frames are fsynced at checkpoints, not at each commit. With
``synchronous=full`` each commit is fsynced and survives power loss too. Measured on the
development VM (2 vCPUs, virtio disk; ``test_throughput_smoke`` prints the same numbers):
one-by-one enqueue runs at ~31,000/s with ``normal`` and ~5,000/s with ``full``, which is
bound by the disk's fsync latency, like huey's SqliteStorage (~5,000/s there: it fsyncs by
default). A batch of 1,000 is one transaction (~200,000 tasks/s either way), and a worker's
claim of 100 plus ack of 100 takes ~1.1 ms with ``normal`` (~1.5 ms with ``full``).
``normal`` is the default because it gives what the other brokers give by default (Redis
with AOF ``everysec`` also loses the last second on power loss) at six times the speed;
choose ``full`` when an enqueue lost to a power failure is unacceptable. Delivery stays
at-least-once either way.

Threads and the event loop. The coroutines never suspend (``Capabilities.inline``): they
do their SQLite work synchronously, so the App's synchronous facade drives them with
``coro.send(None)`` from any thread, without an event loop. Each thread gets its own
connection, opened on first use. The one exception is :meth:`SQLiteBroker.wait`, which
really waits: for a datagram on the doorbell (see :mod:`.doorbell`), for the next
due time it computed (an eta, a lease expiry, a rate-limit token), or for the timeout.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

from ...core.policy import QueuePolicy
from ...errors import ConfigError
from ..base import (
    Capabilities,
    Claimed,
    DeadLetter,
    Lease,
    NewTask,
    QueueStats,
    TaskMetrics,
    check_dead_letters_limit,
    check_release_delay,
)
from . import tx
from .doorbell import Doorbell
from .inspection import Inspection
from .overrides import Overrides
from .queries import queries
from .results import Results
from .store import Store

__all__ = ["SQLiteBroker"]

# How often a waiter looks at the database when it cannot use the doorbell (seconds).
_POLL_WITHOUT_DOORBELL = 0.5
# The most dead letters one dead_letters() call returns (the same on every broker).
# Expired name reservations are swept at most this often per broker instance (seconds).
_NAMES_GC_EVERY = 60.0


class SQLiteBroker(Inspection, Overrides, Results):
    """The broker over one SQLite file (see the module docstring for the guarantees).

    Thread-safe: each thread uses its own connection. Coroutines other than ``wait``
    never suspend, so they may be driven with ``coro.send(None)`` from any thread.
    """

    capabilities = Capabilities(inline=True, inspect=True, results=True)

    def __init__(self, url: str) -> None:
        self.url = url
        self._store = Store(url)
        self.path = self._store.path
        self.synchronous = self._store.synchronous
        self.busy_timeout_ms = self._store.busy_timeout_ms
        self._bell = Doorbell(self.path)
        # wait() calls in progress: (their loop, the future a ring resolves)
        self._waiters: set[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = set()
        self._rr = 0  # round-robin start among the queues of a claim
        self._names_gc_at = 0.0

    def __repr__(self) -> str:
        return f"SQLiteBroker({self.url!r})"

    # ---- life cycle -----------------------------------------------------------------------

    async def open(self) -> None:
        """Connect this thread and create or migrate the schema. Idempotent; other threads
        connect on their first call."""
        self._store.open()

    async def close(self) -> None:
        """Close every connection and the doorbell; open() makes the broker usable again.
        Leased tasks stay leased until acked or expired."""
        self._store.close()
        self._bell.close()
        for loop, fut in list(self._waiters):
            _wake_future(loop, fut)

    # ---- wake-ups ---------------------------------------------------------------------------

    def _ring(self) -> None:
        """After a commit that may have made tasks claimable: wake every waiter, here
        directly and in other processes through the doorbell."""
        if self._waiters:
            for loop, fut in list(self._waiters):
                _wake_future(loop, fut)
        self._bell.ring()

    def _wake_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        for wloop, fut in list(self._waiters):
            if wloop is loop and not fut.done():
                fut.set_result(None)

    def _ring_if_limited(self, queue: str) -> None:
        """Ring when ``queue`` has max_concurrent (a lease just ended there)."""
        row = self._store.read(
            "read policy", lambda conn, now: conn.execute(queries().queue_row, (queue,)).fetchone()
        )
        if row is not None and row[3] is not None:
            self._ring()

    # ---- queues ---------------------------------------------------------------------------

    async def declare(self, policies: Sequence[QueuePolicy]) -> None:
        """Create or update queues (last writer wins); a queue's token bucket is kept."""
        self._store.require_open()
        rows = [
            {
                "name": p.name,
                "rate": p.rate,
                "bucket": p.bucket,
                "max_concurrent": p.max_concurrent,
                "lease": p.lease,
                "dedup_window": p.dedup_window,
            }
            for p in policies
        ]
        if not rows:
            return

        def declare(conn, now):
            conn.executemany(queries().declare, [{**row, "now": now} for row in rows])

        self._store.write("declare", declare)
        self._ring()  # a higher rate or max_concurrent may let waiters claim

    async def set_paused(self, queue: str, paused: bool) -> None:
        """Pause (claims take nothing from it) or resume a queue."""
        self._store.require_open()
        QueuePolicy(queue)  # validates the name
        params = {
            "name": queue,
            "lease": tx.DEFAULTS.lease,
            "dedup_window": tx.DEFAULTS.dedup_window,
            "paused": 1 if paused else 0,
        }
        self._store.write(
            "set_paused", lambda conn, now: conn.execute(queries().set_paused, params)
        )
        if not paused:
            self._ring()

    # ---- the hot path -----------------------------------------------------------------------

    async def enqueue(self, tasks: Sequence[NewTask]) -> list[bool]:
        """Store tasks in one transaction; per task True (created) or False (its name is
        taken in the queue, or was within the queue's dedup window). Idempotent by id: a
        task whose id exists already is left untouched and reported True. Committed on
        return (see the module docstring for what survives a power loss)."""
        self._store.require_open()
        if not tasks:
            return []
        created, written = self._store.write("enqueue", tx.enqueue, tasks)
        if written:
            self._ring()
        return created

    async def claim(self, queues: Sequence[str], limit: int) -> list[Claimed]:
        """Lease up to ``limit`` due tasks, oldest eta first, the limit spread over
        ``queues`` in turn; pause, the token bucket and max_concurrent are applied in the
        same transaction."""
        return self.claim_blocking(queues, limit)

    def claim_blocking(
        self, queues: Sequence[str], limit: int, acks: Sequence[Lease] = ()
    ) -> list[Claimed]:
        """:meth:`ack` then :meth:`claim` in one transaction, from a worker's handler
        thread (``BlockingClaim``), on that thread's own connection."""
        self._store.require_open()
        if acks:
            if limit <= 0 or not queues:
                if self._store.write("ack", self._ack, acks):
                    self._ring()
                return []
            start = self._rr = (self._rr + 1) % len(queues)
            order = [*queues[start:], *queues[:start]]
            unblocked, got = self._store.write("claim", self._ack_claim, acks, order, limit)
            if unblocked:
                self._ring()
            return got
        if limit <= 0 or not queues:
            return []
        start = self._rr = (self._rr + 1) % len(queues)
        order = [*queues[start:], *queues[:start]]
        return self._store.write("claim", tx.claim, order, limit)

    def _ack_claim(self, conn, now: float, acks, order, limit):
        return self._ack(conn, now, acks), tx.claim(conn, now, order, limit)

    async def ack(self, leases: Sequence[Lease]) -> None:
        """Delete finished tasks in one transaction. A finished run wins: the task goes
        whatever its state and token (a late ack after the lease expired, another worker
        re-claimed or dead-lettered it); its name stays reserved for the dedup window.
        Unknown ids are ignored."""
        self._store.require_open()
        if not leases:
            return
        if self._store.write("ack", self._ack, leases):
            self._ring()

    def _ack(self, conn, now: float, leases: Sequence[Lease]) -> bool:
        unblocked = tx.ack(conn, now, leases)
        if now >= self._names_gc_at:
            self._names_gc_at = now + _NAMES_GC_EVERY
            tx.sweep_names(conn, now)
        return unblocked

    async def retry(self, lease: Lease, delay: float, error: str) -> bool:
        """Ready again after ``delay`` seconds with ``error`` recorded; False when the lease
        was lost."""
        self._store.require_open()
        params = {
            "id": lease.id,
            "token": lease.token,
            "delay": max(0.0, delay),
            "error": error,
        }

        def retry(conn, now):
            return conn.execute(queries().retry, {**params, "now": now}).rowcount == 1

        done = self._store.write("retry", retry)
        if done:
            self._ring()  # a delayed one too: waiters recompute their next due time
        return done

    async def release(self, leases: Sequence[Lease], delay: float = 0.0) -> None:
        """Give tasks back, claimable again after ``delay`` seconds; the attempt does not
        count and a stale token is ignored. ConfigError for a delay that is not a finite
        number >= 0."""
        check_release_delay(delay)
        self._store.require_open()
        if not leases:
            return

        def release(conn, now):
            until = now + delay
            params = [{"id": x.id, "token": x.token, "until": until} for x in leases]
            return conn.executemany(queries().release, params).rowcount

        if self._store.write("release", release):
            self._ring()

    async def dead_letter(self, lease: Lease, error: str, traceback: str) -> bool:
        """Move the task to its queue's dead letters; False when the lease was lost."""
        self._store.require_open()
        params = {"id": lease.id, "token": lease.token, "error": error, "traceback": traceback}

        def dead_letter(conn, now):
            return conn.execute(queries().dead_letter, {**params, "now": now}).rowcount == 1

        done = self._store.write("dead_letter", dead_letter)
        if done:
            self._ring_if_limited(lease.queue)
        return done

    async def extend(self, leases: Sequence[Lease]) -> list[float | None]:
        """Renew each lease by its queue's lease duration as stored now; per lease, that
        duration in seconds, or None when the lease is no longer held."""
        self._store.require_open()
        if not leases:
            return []
        return self._store.write("extend", tx.extend, leases)

    # ---- waiting ----------------------------------------------------------------------------

    async def wait(self, queues: Sequence[str], timeout: float) -> None:
        """Return when a task of ``queues`` may be claimable, or after ``timeout`` seconds.

        Sleeps on the doorbell (rung by any process that enqueues, retries, releases,
        requeues, resumes, or ends a lease on a max_concurrent queue) and until the next
        due time of the queues (an eta, a lease expiry, a rate-limit token), so it never
        busy-polls. The one coroutine of this broker that suspends.
        """
        self._store.require_open()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(0.0, timeout)
        listening = self._bell.listen(loop, lambda: self._wake_loop(loop))
        entry = (loop, loop.create_future())
        self._waiters.add(entry)  # before looking, so no ring after the look is missed
        try:
            while True:
                due = self._store.read("wait", tx.next_due, queues)
                now = time.time()
                if due is not None and due <= now:
                    return
                remaining = deadline - loop.time()
                if remaining <= 0 or not self._store.opened:
                    return
                nap = remaining if due is None else min(remaining, due - now)
                if not listening:
                    nap = min(nap, _POLL_WITHOUT_DOORBELL)
                await asyncio.wait((entry[1],), timeout=nap)
                if entry[1].done():  # rung: look again, with a fresh future
                    self._waiters.discard(entry)
                    entry = (loop, loop.create_future())
                    self._waiters.add(entry)
        finally:
            self._waiters.discard(entry)
            entry[1].cancel()

    # ---- inspection and administration ------------------------------------------------------

    async def stats(self, queue: str) -> QueueStats:
        """Counts by state: ready (claimable now, expired leases included), scheduled,
        leased, dead; and whether the queue is paused. One consistent snapshot."""
        return self._store.read("stats", tx.stats, queue)

    async def dead_letters(self, queue: str, limit: int = 100) -> list[DeadLetter]:
        """The queue's dead tasks, oldest failure first; at most ``limit`` (an int from 0 to
        10,000, else ConfigError)."""
        check_dead_letters_limit(limit)
        return self._store.read("dead_letters", tx.dead_letters, queue, limit)

    async def requeue_dead(self, queue: str, ids: Sequence[str] | None = None) -> int:
        """Make dead tasks ready now with fresh attempt counters; returns how many."""
        self._store.require_open()

        def requeue_dead(conn, now):
            if ids is None:
                return conn.execute(
                    queries().requeue_dead_all, {"queue": queue, "now": now}
                ).rowcount
            params = {"queue": queue, "now": now, "ids": tx.json_list(ids)}
            return conn.execute(queries().requeue_dead_ids, params).rowcount

        count = self._store.write("requeue_dead", requeue_dead)
        if count:
            self._ring()
        return count

    async def purge(self, queue: str) -> int:
        """Delete the queue's ready and scheduled tasks (leased and dead ones stay);
        their names stay reserved for the dedup window. Returns how many."""
        self._store.require_open()

        def purge(conn, now):
            gone = conn.execute(queries().purge, (queue,)).fetchall()
            tx.release_names(conn, now, [(queue, name) for (name,) in gone])
            return len(gone)

        return self._store.write("purge", purge)

    async def delete(self, queue: str, *, id: str | None = None, name: str | None = None) -> bool:
        """Delete one task in any state, by id or by name; its name stays reserved for the
        dedup window. False when there is no such task."""
        self._store.require_open()
        if (id is None) == (name is None):
            raise ConfigError("delete: give exactly one of id= or name=")

        def delete(conn, now):
            if id is not None:
                gone = conn.execute(queries().delete_by_id, (id, queue)).fetchall()
            else:
                params = {"queue": queue, "name": name}
                gone = conn.execute(queries().delete_by_name, params).fetchall()
            tx.release_names(conn, now, [(queue, n) for n, _ in gone])
            return gone

        gone = self._store.write("delete", delete)
        if any(state == tx.LEASED for _, state in gone):
            self._ring_if_limited(queue)
        return bool(gone)

    # ---- measurements -----------------------------------------------------------------------

    async def record(self, metrics: Sequence[TaskMetrics]) -> None:
        """Add measurements to the stored per-task-function aggregates."""
        self._store.require_open()
        if metrics:
            self._store.write("record", tx.record, metrics)

    async def metrics(self) -> list[TaskMetrics]:
        """Every task function's aggregates, by name."""
        return self._store.read("metrics", tx.metrics)

    async def now(self) -> float:
        """The broker's clock: this host's ``time.time()``."""
        self._store.require_open()
        return time.time()


def _wake_future(loop: asyncio.AbstractEventLoop, fut: asyncio.Future[None]) -> None:
    """Resolve a waiter's future from any thread."""

    def wake() -> None:
        if not fut.done():
            fut.set_result(None)

    try:
        loop.call_soon_threadsafe(wake)
    except RuntimeError:
        pass  # its loop is closed
