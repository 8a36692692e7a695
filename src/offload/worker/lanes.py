"""Lanes: while a backlog of plain-function tasks waits, the handler threads claim, start
and finish those tasks themselves, so the event loop is not on their path.

Why: a plain ``def`` handler runs on a thread, and every task used to cross to the event
loop and back (claimed and decoded on the loop, run on a thread, judged and acked on the
loop). Each crossing is a wake-up and a turn at the GIL for two threads; with a handler
that does one quick network call, those crossings cost more than the handler itself.

How: when a claim on the loop comes back full (a backlog) and handed work to the threads,
the worker turns its lanes on and its loop stops claiming. A handler thread that runs out
of jobs claims the next batch itself with the broker's synchronous claim
(:class:`~offload.brokers.base.BlockingClaim`), as many as slots are free, and queues them
in the thread pool (which wakes a thread for any job that waited ``KICK_AFTER`` seconds, so
a claimed task still starts within a bounded time). A task that ends well is freed on the
thread; the loop only counts it and acks it, in batches, on its regular tick. Everything
else goes the usual way: async and process tasks, tasks with a timeout, a deadline or a
caller waiting for their result, unknown or undecodable ones are started by the loop, and a
failure is judged there. A claim that comes back short (the backlog is gone), an error, or
a stop turns the lanes off and hands claiming back to the loop, which waits for work as it
always did.

Hooks run on handler threads only when they say they may (``Hooks.thread_safe``); any
other hooks object keeps the lanes off.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
import time
from typing import TYPE_CHECKING, Any

import msgspec

from .. import calls as _calls
from ..brokers.base import BlockingClaim, Claimed, Lease
from ..core import envelope as _env
from ..core.verdict import Verdict
from ..errors import BadArguments, BrokerError
from ..hooks import Hooks
from ..task import TaskInfo
from .processes import ORIGIN_ID
from .state import Running, _lease_length

if TYPE_CHECKING:
    from .runtime import Worker

__all__ = ["LaneRunner"]

log = logging.getLogger("offload.worker")

LANE_BATCH = 64  # most tasks one lane claim takes
# jobs still queued at or below which a lane claims the next batch: half the slots, at most
# this many. At 8 (before), a PostgreSQL lane's claim came too late: its round trip is
# longer than 8 queued jobs last on 64 threads, and the threads sat idle for it; at 32 a
# `def` real body went from 0.70x to 0.97x of its floor there (medians of 6 interleaved
# rounds); SQLite unchanged, Redis a few percent lower (smaller claims; docs/design.md)
LANE_AHEAD = 32
ACK_LATE = 0.01  # seconds a lane's finished task may wait for the lane's next claim to ack it
STUCK_AFTER = 0.025  # seconds without a finished job or a lane claim: the lanes are stuck


class LaneRunner:
    """The lanes' half of :class:`~offload.worker.runtime.Worker` (a mixin)."""

    def _lanes_init(self: Worker) -> None:
        self._lanes_on = False
        self._lane_claim: Any = None  # the broker's claim_blocking, when lanes may run
        self._lane_lock = threading.Lock()  # one lane claim at a time
        self._lanes_off: Any = None  # asyncio.Event: the loop claims again
        self._lane_claimed = 0.0  # time.monotonic() of the last lane claim
        self._fed_threads = False  # the loop's last claim gave a handler thread a job
        self._put_blocking: Any = None
        #: tasks that ended well on a lane: (run, cpu seconds, wall seconds)
        self._lane_done: collections.deque[tuple[Running, float, float]] = collections.deque()
        self._threads.refill = self._refill
        #: queued jobs at or below which a lane claims early (a batch of at least as many)
        self._lane_ahead = max(1, min(LANE_AHEAD, self.concurrency // 2))
        self._threads.refill_below = self._lane_ahead

    def _lanes_open(self: Worker) -> None:
        """At start, on the loop: lanes run only where the broker claims synchronously and
        the hooks may be called from handler threads."""
        self._lanes_off = asyncio.Event()
        broker = self._broker
        hooks_ok = type(self.hooks) is Hooks or getattr(self.hooks, "thread_safe", False)
        if isinstance(broker, BlockingClaim) and hooks_ok:
            self._lane_claim = broker.claim_blocking
        # a call's result stored from the handler's thread (_store_here)
        self._put_blocking = getattr(broker, "put_result_blocking", None)

    def _lanes_start(self: Worker) -> None:
        """On the loop, after a full claim that handed work to the threads."""
        if self._lane_claim is not None and not self._stopping:
            self._lane_claimed = time.monotonic()
            self._lanes_on = True
            self._lanes_off.clear()
            if not self._threads.pending():  # the threads may have run out already
                self._threads.submit(_nothing)  # one wakes, finds no job, and claims

    def _lanes_stop(self: Worker, acks: list[Lease] | None = None) -> None:
        """On any thread, holding the lane lock: claiming (and ``acks``) go back to the
        loop."""
        if self._lanes_on or acks:
            self._lanes_on = False
            loop = self._loop
            if loop is not None and not loop.is_closed():
                try:
                    loop.call_soon_threadsafe(self._lanes_ended, acks)
                except RuntimeError:  # the loop closed: those tasks run again (at-least-once)
                    pass

    def _lanes_ended(self: Worker, acks: list[Lease] | None = None) -> None:
        for lease in acks or ():
            self._outbox.ack(lease)
        self._take_lane_done()
        if not self._lanes_on and self._lanes_off is not None:
            self._lanes_off.set()

    async def _lanes_wait(self: Worker) -> None:
        """The claim loop's pause while the lanes claim: until they hand claiming back,
        a stop, or ``STUCK_AFTER`` seconds (then it looks whether they are stuck)."""
        assert self._stop_event is not None
        waiters = [
            asyncio.ensure_future(self._lanes_off.wait()),
            asyncio.ensure_future(self._stop_event.wait()),
        ]
        try:
            await asyncio.wait(waiters, timeout=STUCK_AFTER, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waiters:
                w.cancel()
        now = time.monotonic()
        hand_back = self._stopping or (
            # every thread is held by a long handler while slots are free: nobody would
            # claim for them, so the loop does (and starts threads as it always has)
            self.concurrency > len(self._running)
            and now - self._threads.last_done >= STUCK_AFTER
            and now - self._lane_claimed >= STUCK_AFTER
        )
        if hand_back and self._lane_lock.acquire(blocking=False):
            # never wait for the lock here: a lane holding it is in a claim's round trip
            # (so not stuck), and the loop must not stop on it; a stopping lane sees
            # _stopping at its next refill
            try:
                self._lanes_stop()
            finally:
                self._lane_lock.release()

    def _lanes_halt(self: Worker) -> bool:
        """On the loop, draining: turn the lanes off unless a lane is in a claim's round
        trip (never wait for it here: the loop's heartbeats must go on). True when they are
        off: any task a lane claimed is then in ``_running``, and no lane claims again (a
        refill sees them off, or ``_stopping``)."""
        # the lock, even when they look off: a claim that came back short turns them off
        # before it puts its tasks in _running
        if not self._lane_lock.acquire(blocking=False):
            return False
        try:
            self._lanes_stop()
        finally:
            self._lane_lock.release()
        return True

    # -- on a handler thread ------------------------------------------------------------

    def _refill(self: Worker, early: bool = False) -> None:
        """A handler thread ran out of jobs, or (``early``) left at most ``_lane_ahead``
        queued: ack what the lanes finished and claim the next batch, in one round trip,
        if the lanes are on. Early, the other busy threads run the jobs still queued
        meanwhile, so the batch's claim no longer leaves them idle for its round trip;
        the tasks it claims wait behind at most ``_lane_ahead`` jobs (and the pool's kick
        still bounds that wait). Never raises (a failure turns the lanes off and leaves
        their acks to the loop, which takes it from there)."""
        if not self._lanes_on:
            return
        lock = self._lane_lock
        if not lock.acquire(blocking=not early):
            return  # another lane is claiming already
        try:
            ahead = self._lane_ahead
            if not self._lanes_on or self._threads.pending() > (ahead if early else 0):
                return
            # a run whose result waits for the loop's judgement has ended: its slot counts
            # as free (else the lanes would stop at once after a batch the loop started)
            free = self.concurrency - len(self._running) + len(self._results)
            if early and free < ahead and not self._stopping:
                return  # the slots are full of queued jobs: claim when they have run
            acks = self._count_lane_done()
            ask = min(free, LANE_BATCH)
            if self._stopping or ask <= 0:
                self._lanes_stop(acks)
                return
            self._lane_claimed = time.monotonic()
            try:
                claimed = self._lane_claim(self.queues, ask, acks)
            except BrokerError:
                self._lanes_stop(acks)  # the loop's next claim meets the outage, says so
                return
            except Exception:
                log.exception("a lane's claim failed; claiming goes back to the event loop")
                self._lanes_stop(acks)
                return
            if len(claimed) < ask:
                self._lanes_stop()
            self.stats.lane_claims += 1
            self.stats.lane_claims_ahead += early
            if claimed:
                self.stats.claimed += len(claimed)
                self._lane_start(claimed)
        finally:
            lock.release()

    def _count_lane_done(self: Worker) -> list[Lease]:
        """Count what the lanes finished (holding the lane lock, on any thread) and return
        the leases to ack."""
        done = self._lane_done
        acks: list[Lease] = []
        hooks = type(self.hooks) is not Hooks
        while done:
            run, cpu, wall = done.popleft()
            self._measure(run, wall, cpu, False)
            acks.append(run.claim.lease)
            info = run.info
            if info is not None:
                if info._ctx is not None:
                    try:
                        info.cancel()  # release the context's deadline timer
                    except Exception:
                        pass
                if hooks:
                    self._hook("succeeded", info)
        self.stats.succeeded += len(acks)
        return acks

    def _lane_start(self: Worker, claimed: list[Claimed]) -> None:
        jobs, others = [], []
        now, maxrss = time.perf_counter(), self._maxrss
        mono = time.monotonic()
        for c in claimed:
            run = Running(c, None, None, now)
            run.rss_base = maxrss
            run.lease_length = ll = _lease_length(c, self._policies[c.queue].lease)
            run.lease_end = mono + ll
            self._running[c.id] = run
            job = self._lane_prepare(run)
            if job is None:
                others.append(run)
            else:
                jobs.append(job)
        if others:
            try:
                self._loop.call_soon_threadsafe(self._start_runs, others)
            except RuntimeError:  # the loop is gone: their leases expire, they run again
                pass
        if jobs:
            self._threads.submit_many(jobs)

    def _lane_prepare(self: Worker, run: Running) -> Any:
        """The job running ``run`` on a lane, or None when the loop must start it (any
        task that is not a plain one: see the module's docstring)."""
        c = run.claim
        try:
            env = _env.decode(c.payload)
        except (msgspec.DecodeError, msgspec.ValidationError):
            return None
        if env.headers or c.expired or (env.app and env.app != self._core.name):
            return None
        tf = self._core.tasks.get(env.task)
        if (
            tf is None
            or tf.is_async
            or (tf.service is not None and tf.service.executor == "process")
        ):
            return None
        if tf.timeout is not None or self._policies[c.queue].timeout is not None:
            return None
        try:
            args, kwargs = tf.convert_args(env.args, env.kwargs)
        except BadArguments:
            return None
        info = TaskInfo(c.id, tf.name, c.queue, c.name, c.attempt, env.headers, None)
        run.task, run.info, run.lane = tf, info, True
        if type(self.hooks) is not Hooks:
            self._hook("claimed", c)
            self._hook("started", info)
        ctx = self._context.copy()  # its own context (see TaskRunner._prepare)
        return lambda: ctx.run(self._run_thread, run, tf, args, kwargs)

    def _lane_ended(self: Worker, run: Running, cpu: float) -> None:
        """A lane's task ended well, on its thread: free its slot now; the loop's tick
        counts and acks it."""
        if self._running.pop(run.claim.id, None) is run:
            self._lane_done.append((run, cpu, time.perf_counter() - run.started))

    def _store_here(self: Worker, run: Running) -> bool:
        """Store a call's result from the thread that ran it, so its caller is woken
        before the loop even hears of it; False (the loop stores it, as for any other
        task) where the broker cannot or it failed."""
        try:
            reply = _calls.reply_for(run.info, Verdict("ack"), run.claim.payload)
            if reply is None:
                return False
            rid = run.info.headers.get(ORIGIN_ID, run.claim.id)  # type: ignore[union-attr]
            return bool(self._put_blocking(rid, *reply))
        except Exception:
            return False

    # -- on the loop ----------------------------------------------------------------------

    def _take_lane_done(self: Worker) -> None:
        """On the loop (every tick while threads work, and at the end): count and ack what
        the lanes finished while they are off. While on, they do it themselves with their
        next claim, unless that is late (threads busy with a long batch): then the loop
        acks what waited ``ACK_LATE`` seconds, so a lease does not run out meanwhile."""
        done = self._lane_done
        if not done:
            return
        lock = self._lane_lock
        if self._lanes_on:
            try:
                run, _, wall = done[0]
            except IndexError:  # a lane took them meanwhile
                return
            if time.perf_counter() - run.started - wall < ACK_LATE or not lock.acquire(False):
                return
        else:
            lock.acquire()
        try:
            for lease in self._count_lane_done():
                self._outbox.ack(lease)
        finally:
            lock.release()
        if self.concurrency - len(self._running) >= self._wake_at:
            self._slot_free.set()

    def _start_runs(self: Worker, runs: list[Running]) -> None:
        """Start, on the loop, what a lane claimed but cannot run itself."""
        for run in runs:
            if self._running.get(run.claim.id) is run:
                self._begin(run)


def _nothing() -> None:
    pass
