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

Connections and script calls are in :mod:`.calls`, errors by who is at fault in
:mod:`.faults` (an outage raises :class:`~offload.errors.BrokerUnavailable` naming the
server, and the next call connects again), URLs in :mod:`.url`. The synchronous
:meth:`RedisBroker.enqueue_blocking` serves the App's sync facade.

``?prefix=name`` namespaces every key (default ``offload``), so several apps or tests can
share one server. Other query arguments are redis-py's connection options (see
:data:`.url.OPTIONS`).
"""

from __future__ import annotations

import asyncio
import itertools
import threading
from collections.abc import Callable, Sequence
from typing import Any

from redis.exceptions import NoScriptError

from ...core.policy import QueuePolicy
from ...errors import BrokerError, ConfigError
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
from .calls import ScriptCalls
from .inspection import Inspection
from .overrides import Overrides
from .park import PARK_MARGIN, Parking
from .results import Results
from .scripts import (
    claimed_from,
    dead_from,
    enqueue_args,
    enqueue_calls,
    metrics_from,
    metrics_key,
    parked_delay,
    record_args,
    runs_key,
    runs_minutes,
    stats_from,
)
from .sync import SyncScripts
from .url import parse_url
from .wait import BlockingConnection, blpop, blpop_cluster, uncut

__all__ = ["RedisBroker"]

_MAX_BLOCK = 20.0  # longest single block, below SOCKET_TIMEOUT; waking early is allowed
# Longest block while parked: a worker killed while parked is passed over by hand-offs once
# its park ends, so parks are short and a longer wait returns early (which is allowed).
_PARKED_BLOCK = 2.0
_PURGE_BATCH = 5000


class RedisBroker(ScriptCalls, Inspection, Overrides, Results):
    """A broker on one Redis server or a Redis Cluster. Open it before use; the
    synchronous :meth:`enqueue_blocking` needs no open (it has its own connections).
    A URL fault that needs no I/O to see raises :class:`~offload.errors.BrokerURLError`
    here."""

    def __init__(self, url: str) -> None:
        super().__init__(url, parse_url(url))
        self.capabilities = Capabilities(
            inline=False,
            cluster=self._cluster,
            handoff=not self._cluster,
            inspect=True,
            results=True,
        )
        self._sync: Any = None
        self._sync_lock = threading.Lock()
        self._rr = itertools.count()
        #: queues whose last claim or peek found work: asked first when slots are fewer
        #: than queues (the rotation still orders them, and the others are peeked at)
        self._hot: set[str] = set()
        self._blocking: BlockingConnection | None = None
        self._cleanups: set[asyncio.Future] = set()
        self._park = Parking(self._cluster)

    @property
    def on_handoff(self) -> Callable[[list[Claimed]], bool] | None:
        """Set by a worker: called with tasks handed to it while it waits, to start them at
        once (True); False gives them back at once, uncounted (HandoffReceiver)."""
        return self._park.on_handoff

    @on_handoff.setter
    def on_handoff(self, fn: Callable[[list[Claimed]], bool] | None) -> None:
        self._park.on_handoff = fn

    # -- connections ---------------------------------------------------------------------

    async def open(self) -> None:
        await self._connect()

    async def close(self) -> None:
        if self._cleanups:
            await asyncio.gather(*self._cleanups, return_exceptions=True)
        if self._r is not None and (self._park.queues or self._park.handed):
            await self._give_back()
        blocking, self._blocking = self._blocking, None
        if blocking is not None:
            await blocking.close()
        await self._close_calls()
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
        # one MULTI/EXEC on a single server: a batch over several queues (an event's
        # subscribers) is stored whole or not at all
        replies = await self._eval_many("enqueue", calls, atomic=True)
        for (_, idx), reply in zip(plan, replies, strict=True):
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
        hot = self._hot
        if limit < n and hot:  # fewer slots than queues: those that had work go first
            order = [q for q in order if q in hot] + [q for q in order if q not in hot]
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
                hot.add(q)
            elif s > 0:
                hot.discard(q)
        left = limit - len(out)
        if left > 0 and full:
            k = len(full)
            calls = [(q, (left // k + (1 if i < left % k else 0),)) for i, q in enumerate(full)]
            calls = [c for c in calls if c[1][0] > 0]
            for (q, _), reply in zip(calls, await self._eval_many("claim", calls), strict=True):
                out += claimed_from(q, reply)
        # Fewer slots than queues: the queues the shares skipped are asked in turn, one
        # task each from as many as slots are left, until the slots are filled or every
        # queue was asked. Else a worker with two slots on eight queues would see
        # "nothing to do" whenever the two it asked were empty, while the others waited.
        # Fewer slots than queues: the queues the shares skipped are peeked at in one
        # round trip (a peek with no worker id parks nothing) and the first of them with a
        # claimable task, in the rotation's order, asked for one each. Else a worker with
        # two slots on eight queues would see "nothing to do" whenever the two it asked
        # were empty, while the others waited (and claim again and again to find them).
        left = limit - len(out)
        unasked = [q for q in order if not shares[q]]
        if left > 0 and unasked:
            delays = await self._eval_many("peek", [(q, ("", 0)) for q in unasked])
            ready = [q for q, d in zip(unasked, delays, strict=True) if d == 0]
            hot.update(ready)
            ready = ready[:left]
            if ready:
                calls = [(q, (1,)) for q in ready]
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

    async def release(self, leases: Sequence[Lease], delay: float = 0.0) -> None:
        delay = check_release_delay(delay)
        if leases:
            at = repr(float(delay))
            groups = self._lease_groups(leases)
            await self._eval_many("release", [(q, [at, *pairs]) for q, pairs in groups.items()])

    async def dead_letter(self, lease: Lease, error: str, traceback: str) -> bool:
        args = (lease.id, lease.token, error, traceback)
        return bool(await self._eval("dead_letter", lease.queue, args))

    async def extend(self, leases: Sequence[Lease]) -> list[float | None]:
        if not leases:
            return []
        groups = self._lease_groups(leases)
        replies = await self._eval_many("extend", list(groups.items()))
        held: dict[tuple[str, str, str], float | None] = {}
        for (queue, pairs), reply in zip(groups.items(), replies, strict=True):
            for j, us in enumerate(reply):
                held[(queue, pairs[2 * j], pairs[2 * j + 1])] = None if us is None else us / 1e6
        return [held[(le.queue, le.id, le.token)] for le in leases]

    async def wait(self, queues: Sequence[str], timeout: float) -> None:
        if not queues:
            await asyncio.sleep(max(0.0, timeout))
            return
        if self._park.handed:
            return  # handed to us already: the next claim returns them
        timeout = min(timeout, _MAX_BLOCK if self._cluster else _PARKED_BLOCK)
        # Park: until the next claim, enqueue may lease a task to us (or wake us). The
        # claim just before has usually done it already.
        delays = self._park.parked_by_claim(queues, timeout)
        if delays is None:
            park, before = self._park.park(queues, timeout + PARK_MARGIN)
            peek = self._read(lambda: self._eval_many("peek", [(q, park) for q in queues]))
            delays = await uncut(peek, self._cleanups)
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
                return
            keys = [*self._park.inboxes(self._qkeys), *wake]
            r = self._client()
            conns = self._blocking = self._blocking or BlockingConnection(r)
            popped = await blpop(r, conns, keys, timeout, self._cleanups, self._abandoned)
        except Exception as exc:
            self._park.pre.clear()  # the server may have lost our park (a restart)
            raise self._faults.error("a blocking wait (BLPOP)", exc) from exc
        if popped:
            await self._taken(popped)

    async def _taken(self, popped: tuple[bytes, bytes]) -> bool:
        """Pass on what a BLPOP popped; False when it was a wake-up token. A hand-off the
        worker cannot start now goes back at once, uncounted, for any worker to claim: it
        would not be heartbeated here, and its lease would run out under a second runner."""
        taken, refused = self._park.take(popped)
        if refused:
            await self.release([c.lease for c in refused])
        return taken

    async def _abandoned(self, popped: tuple[bytes, bytes]) -> None:
        # A wake-up token taken by a wait nobody awaits any more: another idle worker's.
        if not await self._taken(popped):
            await self._command("waking another worker", "LPUSH", popped[0], popped[1])

    async def stats(self, queue: str) -> QueueStats:
        return stats_from(queue, await self._read(lambda: self._eval("stats", queue)))

    async def dead_letters(self, queue: str, limit: int = 100) -> list[DeadLetter]:
        if check_dead_letters_limit(limit) == 0:
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
            raise ConfigError("delete() needs id= or name=")
        return bool(await self._eval("delete", queue, (id or "", name or "")))

    async def record(self, metrics: Sequence[TaskMetrics]) -> None:
        if not metrics:
            return
        r = self._client()
        s = self._scripts["record"]
        keys = (metrics_key(self.prefix), runs_key(self.prefix))
        try:
            pipe = r.pipeline(transaction=False)
            for m in metrics:
                pipe.execute_command("EVALSHA", s.sha, 2, *keys, *record_args(m))
            results = await pipe.execute(raise_on_error=False)
            for m, res in zip(metrics, results, strict=True):
                if isinstance(res, NoScriptError):
                    await self._load_scripts()
                    await r.execute_command("EVALSHA", s.sha, 2, *keys, *record_args(m))
                elif isinstance(res, Exception):
                    raise res
        except Exception as exc:
            raise self._faults.error("recording metrics", exc) from exc

    async def metrics(self) -> list[TaskMetrics]:
        """Every task function's aggregates, with its runs per minute for the minutes
        kept (one HGETALL per minute, pipelined: no scan)."""

        async def read() -> tuple[dict, dict[int, dict]]:
            r = self._client()
            sec, _usec = await r.execute_command("TIME")
            minutes = runs_minutes(int(sec) // 60)
            slots = runs_key(self.prefix)
            pipe = r.pipeline(transaction=False)
            pipe.execute_command("HGETALL", metrics_key(self.prefix))
            for minute in minutes:
                pipe.execute_command("HGETALL", f"{slots}{minute}")
            raw, *hashes = await pipe.execute()
            return raw, {m: h for m, h in zip(minutes, hashes, strict=True) if h}

        try:
            raw, runs = await self._read(read)
        except Exception as exc:
            raise self._faults.error("reading metrics", exc) from exc
        return metrics_from(raw, runs)

    async def now(self) -> float:
        sec, usec = await self._command("reading the clock", "TIME")
        return int(sec) + int(usec) / 1e6

    # -- synchronous producer path --------------------------------------------------------

    def enqueue_blocking(self, tasks: Sequence[NewTask]) -> list[bool]:
        """:meth:`enqueue` for synchronous producers (thread-safe, no event loop): the same
        script on this thread's own connection. Stored on the server when it returns (as
        durable as the server's persistence settings make it)."""
        if not tasks:
            return []
        sync = self._sync_scripts()
        try:
            return sync.enqueue(self._scripts["enqueue"], lambda q: self._qkeys(q).keys, tasks)
        except Exception as exc:
            raise self._faults.error("enqueue", exc) from exc

    def claim_blocking(
        self, queues: Sequence[str], limit: int, acks: Sequence[Lease] = ()
    ) -> list[Claimed]:
        """:meth:`ack` then :meth:`claim` from a worker's handler thread (see
        ``BlockingClaim``): one pipeline of script calls (the acks per queue, then a share
        of ``limit`` per queue) on the thread's own connection. Never parks; it unparks
        this worker where an earlier claim parked it."""
        sync, park, scripts = self._sync_scripts(), self._park, self._scripts
        calls = [
            (scripts["ack"], self._qkeys(q).keys, pairs)
            for q, pairs in self._lease_groups(acks).items()
        ]
        n_acks, claims = len(calls), []
        n = len(queues)
        start = next(self._rr) % n if n else 0
        for i in range(n if limit > 0 else 0):
            q = queues[(start + i) % n]
            share = limit // n + (1 if i < limit % n else 0)
            if share:
                claims.append(q)
                calls.append((scripts["claim"], self._qkeys(q).keys, park.claim_args(q, share)))
        if not calls:
            return []
        try:
            replies = sync.eval_many(calls)
        except Exception as exc:
            raise self._faults.error("claim" if claims else "ack", exc) from exc
        out: list[Claimed] = []
        for q, reply in zip(claims, replies[n_acks:], strict=True):
            park.queues.discard(q)
            out += claimed_from(q, reply)
        return out

    def _sync_scripts(self) -> SyncScripts:
        with self._sync_lock:
            if self._sync is None:
                self._sync = SyncScripts(self._url.redis_url, self._cluster, self._client_kwargs())
            return self._sync
