"""The Redis broker: ``redis://``, ``rediss://`` and ``redis+cluster://`` URLs.

Every state change is one atomic Lua script (``lua/*.lua``, see :mod:`.scripts` for the
key layout), run on the server's clock and called by SHA (loaded again on ``NOSCRIPT``,
e.g. after a restart). Idle workers block in ``BLPOP`` on a per-queue wake list that
enqueue, retry, release, resume and (for a saturated queue) ack push to, for as long as a
script computes from the next due eta, lease expiry or rate-limit token.

An idle worker also *parks* (``peek.lua``, :mod:`.park`) before it blocks, and on a
single server blocks on its own inbox too: enqueue then leases a task due now straight to
it (``notify_parked`` in ``_lib.lua``), so the BLPOP that wakes the worker already carries
its claim: one hop from send to start instead of a wake-up and a claim. The worker's next
claim unparks it and takes back anything handed to it meanwhile; :meth:`RedisBroker.close`
gives such tasks back. With nobody parked, nobody is blocked, and enqueue wakes no one.

A connection failure raises :class:`~offload.errors.BrokerUnavailable` naming the server;
the next call connects again. Writes are never retried blindly (a repeated claim would
hide tasks until their lease ends); idempotent reads retry three times with backoff.
The synchronous :meth:`RedisBroker.enqueue_blocking` serves the App's sync facade.

``?prefix=name`` namespaces every key (default ``offload``), so several apps or tests can
share one server. Other query arguments are redis-py's (``?socket_timeout=5``, ...).
"""

from __future__ import annotations

import asyncio
import itertools
import threading
from collections.abc import Callable, Sequence
from typing import Any

import redis.asyncio as _aredis
from redis.asyncio.retry import Retry as _AsyncRetry
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.exceptions import ConnectionError as _ConnError
from redis.exceptions import NoScriptError, RedisError, ResponseError
from redis.exceptions import TimeoutError as _Timeout

from ...core.policy import QueuePolicy
from ...errors import BrokerError, BrokerUnavailable
from ..base import (
    Capabilities,
    Claimed,
    DeadLetter,
    Lease,
    NewTask,
    QueueStats,
    TaskMetrics,
)
from .park import Parking
from .scripts import (
    CommandPacker,
    QueueKeys,
    Script,
    claimed_from,
    dead_from,
    enqueue_args,
    enqueue_calls,
    metrics_from,
    metrics_key,
    parked_delay,
    record_args,
    scripts,
    split_url,
    stats_from,
)
from .sync import SyncScripts
from .wait import SOCKET_TIMEOUT, BlockingConnection, blpop, blpop_cluster, probe

__all__ = ["RedisBroker"]

_UNAVAILABLE = (_ConnError, _Timeout, OSError)
_MAX_BLOCK = 20.0  # longest single block, below SOCKET_TIMEOUT; waking early is allowed
_PURGE_BATCH = 5000


class RedisBroker:
    """A broker on one Redis server or a Redis Cluster. Open it before use; the
    synchronous :meth:`enqueue_blocking` needs no open (it has its own connections)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._redis_url, self.prefix, self._cluster, self._where = split_url(url)
        self.capabilities = Capabilities(
            inline=False, cluster=self._cluster, handoff=not self._cluster
        )
        self._scripts = scripts()
        self._keys: dict[str, QueueKeys] = {}
        self._r: Any = None
        self._sync: Any = None
        self._sync_lock = threading.Lock()
        self._rr = itertools.count()
        self._packer = CommandPacker()
        self._fast: Any = None
        self._fast_lock = asyncio.Lock()
        self._blocking: BlockingConnection | None = None
        self._cleanups: set[asyncio.Future] = set()
        self._park = Parking(self._cluster)
        self._read_retry = _AsyncRetry(
            ExponentialBackoff(cap=0.25, base=0.01), 3, supported_errors=(BrokerUnavailable,)
        )

    @property
    def on_handoff(self) -> Callable[[list[Claimed]], bool] | None:
        """Set by a worker: called with tasks handed to it while it waits, to start them at
        once; returns False to have them returned by the next claim instead."""
        return self._park.on_handoff

    @on_handoff.setter
    def on_handoff(self, fn: Callable[[list[Claimed]], bool] | None) -> None:
        self._park.on_handoff = fn

    # -- connections ---------------------------------------------------------------------

    def _unavailable(self, exc: BaseException) -> BrokerUnavailable:
        return BrokerUnavailable(
            f"cannot reach Redis at {self._where} ({type(exc).__name__}: {exc}); check that "
            f"the server is running and that the broker URL is right; the call did not "
            "complete, so retry it once Redis is back (enqueue is idempotent by task id)"
        )

    def _client_kwargs(self) -> dict[str, Any]:
        return {"socket_connect_timeout": 5.0, "socket_timeout": SOCKET_TIMEOUT}

    async def open(self) -> None:
        if self._r is None:
            if self._cluster:
                self._r = _aredis.RedisCluster.from_url(self._redis_url, **self._client_kwargs())
            else:
                # No blind retries: a claim repeated after a lost reply would lease tasks
                # nobody runs until the lease ends. Reads retry explicitly (_read).
                self._r = _aredis.Redis.from_url(
                    self._redis_url, retry=_AsyncRetry(NoBackoff(), 0), **self._client_kwargs()
                )
        try:
            await self._load_scripts()
        except _UNAVAILABLE as exc:
            raise self._unavailable(exc) from exc

    async def close(self) -> None:
        if self._cleanups:
            await asyncio.gather(*self._cleanups, return_exceptions=True)
        if self._r is not None and (self._park.queues or self._park.handed):
            await self._give_back()
        r, self._r = self._r, None
        fast, self._fast = self._fast, None
        if fast is not None:
            await fast.disconnect()
        blocking, self._blocking = self._blocking, None
        if blocking is not None:
            await blocking.close()
        if r is not None:
            await r.aclose()
        with self._sync_lock:
            s, self._sync = self._sync, None
        if s is not None:
            s.close()

    async def _give_back(self) -> None:
        """Unpark, and release what was handed to this worker but never returned by claim:
        otherwise those tasks would wait for their lease to end."""
        park = self._park
        handed, park.handed = park.handed, []
        try:
            if park.queues:  # claims of nothing: unpark, release what the inbox holds
                await self._eval_many("claim", park.unpark_only(()))
                park.queues.clear()
            await self.release([c.lease for c in handed])
        except BrokerError:
            pass  # unreachable: those leases run out and the tasks are claimed again

    async def _load_scripts(self) -> None:
        for s in self._scripts.values():
            await self._r.script_load(s.source)

    def _client(self) -> Any:
        if self._r is None:
            raise BrokerError(f"Redis broker {self.url!r} is not open: call open() first")
        return self._r

    def _qkeys(self, queue: str) -> QueueKeys:
        k = self._keys.get(queue)
        if k is None:
            k = self._keys[queue] = QueueKeys.of(self.prefix, queue)
        return k

    # -- script calls --------------------------------------------------------------------

    async def _eval(self, name: str, queue: str, args: Sequence[Any] = ()) -> Any:
        """Run one per-queue script; raise BrokerUnavailable when Redis can't be reached."""
        r = self._client()
        s = self._scripts[name]
        keys = self._qkeys(queue).keys
        try:
            try:
                return await self._evalsha(r, s, keys, args)
            except NoScriptError:
                # SCRIPT FLUSH or a restarted server: load everything again, then once more.
                await self._load_scripts()
                return await self._evalsha(r, s, keys, args)
        except _UNAVAILABLE as exc:
            raise self._unavailable(exc) from exc
        except ResponseError as exc:
            raise BrokerError(f"Redis at {self._where} refused script {name!r}: {exc}") from exc

    async def _evalsha(self, r: Any, s: Script, keys: tuple[str, ...], args: Sequence[Any]) -> Any:
        if self._cluster or self._fast_lock.locked():
            return await r.execute_command("EVALSHA", s.sha, len(keys), *keys, *args)
        # Calls one at a time (the common case) share one connection outside the pool,
        # packed by hand: redis-py's pool checkout costs more than the script runs.
        # Concurrent calls go through the pool above, in parallel.
        async with self._fast_lock:
            conn = self._fast
            if conn is None:
                pool = r.connection_pool
                conn = self._fast = pool.connection_class(**pool.connection_kwargs)
            elif conn.is_connected and await probe(conn):
                await conn.disconnect()  # closed by the server: reconnect
            try:
                await conn.send_packed_command([self._packer.evalsha(s, keys, args)])
                return await conn.read_response()
            except ResponseError:
                raise  # the reply was read whole: the connection is fine
            except BaseException:
                await conn.disconnect()  # a reply may be pending: never reuse as is
                raise

    async def _eval_many(self, name: str, calls: Sequence[tuple[str, Sequence[Any]]]) -> list:
        """One script on several queues, pipelined (one round trip on a single server)."""
        if len(calls) == 1:
            return [await self._eval(name, *calls[0])]
        r = self._client()
        s = self._scripts[name]
        try:
            pipe = r.pipeline(transaction=False)
            for queue, args in calls:
                keys = self._qkeys(queue).keys
                pipe.execute_command("EVALSHA", s.sha, len(keys), *keys, *args)
            results = await pipe.execute(raise_on_error=False)
        except _UNAVAILABLE as exc:
            raise self._unavailable(exc) from exc
        out = []
        for (queue, args), res in zip(calls, results, strict=True):
            if isinstance(res, NoScriptError):
                res = await self._eval(name, queue, args)
            elif isinstance(res, _UNAVAILABLE):
                raise self._unavailable(res)
            elif isinstance(res, RedisError):
                raise BrokerError(f"Redis at {self._where} refused script {name!r}: {res}")
            out.append(res)
        return out

    async def _read(self, fn: Callable[[], Any]) -> Any:
        """Run an idempotent read, retrying a dropped connection with backoff."""
        return await self._read_retry.call_with_retry(fn, lambda _e: asyncio.sleep(0))

    # -- the protocol --------------------------------------------------------------------

    async def declare(self, policies: Sequence[QueuePolicy]) -> None:
        def opt(x: float | int | None) -> str:
            return "" if x is None else repr(x)

        calls = [
            (
                p.name,
                (
                    opt(p.rate),
                    opt(p.bucket),
                    opt(p.max_concurrent),
                    repr(p.lease),
                    repr(p.dedup_window),
                ),
            )
            for p in policies
        ]
        if calls:
            await self._eval_many("declare", calls)

    async def enqueue(self, tasks: Sequence[NewTask]) -> list[bool]:
        if not tasks:
            return []
        if len(tasks) == 1:
            t = tasks[0]
            return [bool((await self._eval("enqueue", t.queue, enqueue_args(tasks)))[0])]
        plan = enqueue_calls(tasks)
        calls = [(q, enqueue_args([tasks[i] for i in idx])) for q, idx in plan]
        out = [False] * len(tasks)
        for (_, idx), reply in zip(plan, await self._eval_many("enqueue", calls), strict=True):
            for i, ok in zip(idx, reply, strict=True):
                out[i] = bool(ok)
        return out

    async def claim(self, queues: Sequence[str], limit: int) -> list[Claimed]:
        if limit <= 0 or not queues:
            return []
        self._park.pre.clear()
        handed: list[Claimed] = []
        if self._park.handed:
            handed, more = self._park.take_handed(limit)
            if not more:  # the hand-off unparked us: no round trip needed
                return handed
            limit -= len(handed)
        return handed + await self._claim(queues, limit)

    async def _claim(self, queues: Sequence[str], limit: int) -> list[Claimed]:
        park = self._park
        # A worker (one that waits when a claim finds nothing) is parked by the claim
        # itself: the wait that follows needs no round trip of its own before it blocks.
        waits = park.on_handoff is not None
        extra = park.unpark_only(queues)
        if len(queues) == 1 and not extra:
            q = queues[0]
            args = park.claim_args(q, limit, waits)
            if waits:
                park.queues.add(q)  # if the call is cancelled it may have parked us
            reply = await self._eval("claim", q, args)
            park.claimed(q, parked_delay(reply))
            return claimed_from(q, reply)
        # Spread the limit over the queues, starting at a rotating one so none starves;
        # a second round gives what empty queues left to those that filled their share.
        n = len(queues)
        start = next(self._rr) % n
        order = [queues[(start + i) % n] for i in range(n)]
        shares = {q: limit // n + (1 if i < limit % n else 0) for i, q in enumerate(order)}
        out: list[Claimed] = []
        full: list[str] = []
        calls = [
            (q, park.claim_args(q, s, waits and s > 0))
            for q, s in shares.items()
            if s or q in park.queues
        ]
        if waits:
            park.queues.update(q for q, (s, *_) in calls if s)
        replies = await self._eval_many("claim", calls + extra)
        for q, _ in extra:
            park.queues.discard(q)
        # (the replies of `extra`, claims of nothing, come last and carry no tasks)
        for (q, (s, *_)), reply in zip(calls, replies, strict=False):
            park.claimed(q, parked_delay(reply))
            got = claimed_from(q, reply)
            out += got
            if len(got) >= s > 0:
                full.append(q)
        left = limit - len(out)
        if left > 0 and full:
            k = len(full)
            calls = [(q, (left // k + (1 if i < left % k else 0),)) for i, q in enumerate(full)]
            calls = [c for c in calls if c[1][0] > 0]
            for (q, _), reply in zip(calls, await self._eval_many("claim", calls), strict=True):
                out += claimed_from(q, reply)
        return out

    @staticmethod
    def _lease_groups(leases: Sequence[Lease]) -> dict[str, list]:
        groups: dict[str, list] = {}
        for le in leases:
            groups.setdefault(le.queue, []).extend((le.id, le.token))
        return groups

    async def ack(self, leases: Sequence[Lease]) -> None:
        if leases:
            await self._eval_many("ack", list(self._lease_groups(leases).items()))

    async def retry(self, lease: Lease, delay: float, error: str) -> bool:
        args = (lease.id, lease.token, repr(float(delay)), error)
        return bool(await self._eval("retry", lease.queue, args))

    async def release(self, leases: Sequence[Lease]) -> None:
        if leases:
            await self._eval_many("release", list(self._lease_groups(leases).items()))

    async def dead_letter(self, lease: Lease, error: str, traceback: str) -> bool:
        args = (lease.id, lease.token, error, traceback)
        return bool(await self._eval("dead_letter", lease.queue, args))

    async def extend(self, leases: Sequence[Lease]) -> list[bool]:
        if not leases:
            return []
        groups = self._lease_groups(leases)
        replies = await self._eval_many("extend", list(groups.items()))
        held = {}
        for (queue, pairs), reply in zip(groups.items(), replies, strict=True):
            for j, ok in enumerate(reply):
                held[(queue, pairs[2 * j], pairs[2 * j + 1])] = bool(ok)
        return [held[(le.queue, le.id, le.token)] for le in leases]

    async def wait(self, queues: Sequence[str], timeout: float) -> None:
        if not queues:
            await asyncio.sleep(max(0.0, timeout))
            return
        if self._park.handed:
            return  # handed to us already: the next claim returns them
        timeout = min(timeout, _MAX_BLOCK)
        # Park: until the next claim, enqueue may lease a task to us (or wake us). The
        # claim just before has usually done it already.
        delays = self._park.parked_by_claim(queues, timeout)
        if delays is None:
            park, before = self._park.park(queues, timeout + 1.0)
            delays = await self._read(lambda: self._eval_many("peek", [(q, park) for q in queues]))
            self._park.peeked(queues, delays, before)
        soonest = min((d / 1e6 for d in delays if d >= 0), default=None)
        if soonest is not None:
            if soonest <= 0:
                return
            timeout = min(timeout, soonest)
        if timeout < 0.001:  # BLPOP 0 would block forever
            await asyncio.sleep(max(0.0, timeout))
            return
        wake = [self._qkeys(q).wake for q in queues]
        try:
            if self._cluster:
                await blpop_cluster(self._client(), wake, timeout)
            else:
                keys = [*self._park.inboxes(self._qkeys), *wake]
                r = self._client()
                conns = self._blocking = self._blocking or BlockingConnection(r)
                popped = await blpop(r, conns, keys, timeout, self._cleanups, self._abandoned)
                if popped:
                    self._park.take(popped)
        except _UNAVAILABLE as exc:
            raise self._unavailable(exc) from exc
        except ResponseError as exc:  # e.g. an ACL that denies CLIENT ID / CLIENT UNBLOCK
            raise BrokerError(
                f"Redis at {self._where} refused a blocking wait: {exc}; the broker needs "
                "BLPOP, CLIENT ID and CLIENT UNBLOCK on its connections"
            ) from exc

    async def _abandoned(self, popped: tuple[bytes, bytes]) -> None:
        # A wake-up token taken by a wait nobody awaits any more: another idle worker's.
        if not self._park.take(popped):
            await self._client().execute_command("LPUSH", popped[0], popped[1])

    async def stats(self, queue: str) -> QueueStats:
        return stats_from(queue, await self._read(lambda: self._eval("stats", queue)))

    async def dead_letters(self, queue: str, limit: int = 100) -> list[DeadLetter]:
        if limit <= 0:
            return []
        reply = await self._read(lambda: self._eval("dead_letters", queue, (limit,)))
        return dead_from(queue, reply)

    async def requeue_dead(self, queue: str, ids: Sequence[str] | None = None) -> int:
        if ids is not None and not ids:
            return 0
        return int(await self._eval("requeue_dead", queue, list(ids or ())))

    async def set_paused(self, queue: str, paused: bool) -> None:
        await self._eval("pause", queue, ("1" if paused else "0",))

    async def purge(self, queue: str) -> int:
        total = 0
        while True:
            n = int(await self._eval("purge", queue, (_PURGE_BATCH,)))
            total += n
            if n < _PURGE_BATCH:
                return total

    async def delete(self, queue: str, *, id: str | None = None, name: str | None = None) -> bool:
        if id is None and name is None:
            raise ValueError("delete() needs id= or name=")
        return bool(await self._eval("delete", queue, (id or "", name or "")))

    async def record(self, metrics: Sequence[TaskMetrics]) -> None:
        if not metrics:
            return
        r = self._client()
        s = self._scripts["record"]
        key = metrics_key(self.prefix)
        try:
            pipe = r.pipeline(transaction=False)
            for m in metrics:
                pipe.execute_command("EVALSHA", s.sha, 1, key, *record_args(m))
            results = await pipe.execute(raise_on_error=False)
            for m, res in zip(metrics, results, strict=True):
                if isinstance(res, NoScriptError):
                    await self._load_scripts()
                    await r.execute_command("EVALSHA", s.sha, 1, key, *record_args(m))
                elif isinstance(res, Exception):
                    raise res
        except _UNAVAILABLE as exc:
            raise self._unavailable(exc) from exc

    async def metrics(self) -> list[TaskMetrics]:
        async def read() -> dict:
            try:
                return await self._client().hgetall(metrics_key(self.prefix))
            except _UNAVAILABLE as exc:
                raise self._unavailable(exc) from exc

        return metrics_from(await read())

    async def now(self) -> float:
        try:
            sec, usec = await self._client().time()
        except _UNAVAILABLE as exc:
            raise self._unavailable(exc) from exc
        return sec + usec / 1e6

    # -- synchronous producer path --------------------------------------------------------

    def enqueue_blocking(self, tasks: Sequence[NewTask]) -> list[bool]:
        """:meth:`enqueue` for synchronous producers (thread-safe, no event loop): the same
        script on this thread's own connection. Stored on the server when it returns (as
        durable as the server's persistence settings make it)."""
        if not tasks:
            return []
        with self._sync_lock:
            if self._sync is None:
                self._sync = SyncScripts(self._redis_url, self._cluster, self._client_kwargs())
            sync = self._sync
        try:
            return sync.enqueue(self._scripts["enqueue"], lambda q: self._qkeys(q).keys, tasks)
        except _UNAVAILABLE as exc:
            raise self._unavailable(exc) from exc
        except ResponseError as exc:
            raise BrokerError(f"Redis at {self._where} refused to enqueue: {exc}") from exc
