"""The worker: claim what it can start now, run it, and ack, retry or dead-letter it.

Every background job (claim loop, ack flusher, heartbeat, metrics flusher) belongs to one
task group owned by :meth:`Worker.run`, and ends with it. A task is acked only after its
handler returned; the acks of many tasks are flushed together, so a crash can at worst run
a finished task again (at-least-once), never lose one.

Shutdown (SIGTERM, SIGINT or :meth:`Worker.stop`): stop claiming, let running tasks finish
within ``grace`` seconds, then release the rest at once without counting the attempt (another
worker takes them), flush, exit. A second signal skips the grace.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import contextvars
import logging
import resource
import signal
import time
from collections.abc import Sequence

from .. import hooks as _hooks
from ..app import App
from ..brokers.base import Broker, Claimed, HandoffReceiver
from ..core.policy import DEFAULT_CONCURRENCY
from ..errors import BadArguments, BrokerError, ConfigError
from ..task import _current
from . import gctune, stall
from .ahead import AheadRunner
from .brokerhost import MODES, hosted
from .execute import TaskRunner
from .lanes import LaneRunner
from .leases import heartbeat
from .metrics import MetricsBuffer
from .outbox import Outbox
from .periodic import keep_schedules
from .policies import StoredRetry, declare
from .processes import ChildPool, ProcessRunner
from .state import Running, WorkerStats
from .threads import ThreadPool
from .timeouts import TimeoutRunner

__all__ = ["Worker", "WorkerStats"]

log = logging.getLogger("offload.worker")

CLAIM_BATCH = 250  # most tasks claimed per round trip
# While a backlog waits, a freed slot waits for others before it is claimed for: one claim
# per few freed slots, not one per task (a claim costs the loop far more than starting a
# task). The wait ends when a quarter of the slots are free or after twice the claim's
# round trip, bounded here; an idle worker claims at once.
GATHER_MIN = 0.0005
GATHER_MAX = 0.005
# While tasks run, acks are flushed at most every ACK_PAUSE seconds, or twice the last
# flush's round trip where that is longer (a slow broker, bounded by ACK_PAUSE_MAX): many
# per call instead of one call per task. A later ack costs nothing but a lease held a
# moment longer.
ACK_PAUSE = 0.002
ACK_PAUSE_MAX = 0.01
DRAIN_POLL = 0.05  # a draining worker looks at its runs at least this often (see _drain)


class Worker(TaskRunner, TimeoutRunner, LaneRunner, ProcessRunner, AheadRunner):
    """Runs the tasks of ``queues`` (default: all of the App's) with at most ``concurrency``
    in flight. Async handlers run on the worker's event loop, plain functions on threads,
    tasks of ``executor="process"`` services in child processes. Running one task is
    :class:`~offload.worker.execute.TaskRunner`'s part (and
    :class:`~offload.worker.processes.ProcessRunner`'s, in a child).

    ``tune_gc=True`` tunes the garbage collector for a process that runs this worker
    alone, from its start to its stop (``offload worker`` does; see
    :mod:`offload.worker.gctune`). ``broker_process`` (``"auto"``, ``"on"``, ``"off"``):
    whether claims and acks move to a helper process while a backlog waits (see
    :mod:`offload.worker.brokerhost`)."""

    def __init__(
        self,
        app: App,
        *,
        queues: Sequence[str] | None = None,
        concurrency: int = DEFAULT_CONCURRENCY,
        grace: float = 30.0,
        burst: bool = False,
        hooks: _hooks.Hooks | None = None,
        install_signal_handlers: bool = False,
        unknown_grace: float = 900.0,
        tune_gc: bool = False,
        broker_process: str = "auto",
    ) -> None:
        self.app = app
        self._core = core = app.registry
        self.queues = list(dict.fromkeys(queues)) if queues is not None else sorted(core.queues)
        if queues is not None and not self.queues:
            raise ConfigError("Worker(queues=[]) names no queue; leave queues out for all")
        for q in self.queues:
            core.policy(q)  # UnknownQueue names the bad one
        core.check_executors(self.queues)  # never a process-executor task on a thread
        if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
            raise BadArguments(f"concurrency {concurrency!r} must be a whole number >= 1")
        if not isinstance(grace, (int, float)) or not 0 <= grace < float("inf"):
            raise BadArguments(f"grace {grace!r} must be seconds >= 0")
        self.concurrency = concurrency
        self.grace = grace
        if not isinstance(unknown_grace, (int, float)) or not 0 <= unknown_grace < float("inf"):
            raise BadArguments(f"unknown_grace {unknown_grace!r} must be seconds >= 0")
        #: seconds a task of a function this worker does not know is left for a newer
        #: worker (released uncounted) before it is dead-lettered
        self.unknown_grace = float(unknown_grace)
        self.burst = burst
        if broker_process not in MODES:
            raise ConfigError(
                f"broker_process {broker_process!r} must be one of: {', '.join(MODES)}"
            )
        self.broker_process = broker_process  # see worker/brokerhost.py
        self.hooks = hooks or _hooks.Hooks()
        self.stats = WorkerStats()
        self._signals = install_signal_handlers
        self._tune_gc = tune_gc  # see worker/gctune.py: for a process that only runs this
        self._running: dict[str, Running] = {}
        self._outbox = Outbox()
        self._metrics = MetricsBuffer()
        self._unknown_logged: set[str] = set()
        self._foreign_logged: set[str] = set()
        self._hook_failed: set[str] = set()
        self._broker: Broker | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping = False
        self._stop_event: asyncio.Event | None = None
        self._hurry: asyncio.Event | None = None
        self._slot_free: asyncio.Event | None = None
        self._wake_at = 1  # free slots that set _slot_free (more while gathering a claim)
        self._claim_at = max(1, min(CLAIM_BATCH, concurrency // 4))
        self._claim_rtt = 0.0  # seconds, a moving average
        self._closed = asyncio.Event()
        self._down_since: float | None = None
        self._backoff = 0.0
        self._threads = ThreadPool(concurrency)
        # what handler threads finished, for the loop to judge (see TaskRunner._run_thread)
        self._results: collections.deque[tuple[Running, BaseException | None, str, float]]
        self._results = collections.deque()
        self._results_wake = False
        self._kick: asyncio.TimerHandle | None = None  # wakes threads for queued jobs
        self._lanes_init()
        self._ahead_init()
        self._policies = {q: core.policy(q) for q in self.queues}
        served = set(self.queues)
        preload = sorted(
            {
                tf.fn.__module__
                for tf in core.tasks.values()
                if tf.service is not None
                and tf.service.executor == "process"
                and (tf.queue in served or tf.on_oom in served)
            }
        )
        self._maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB, see _done
        self._rss_tick = 0  # runs judged: one in 16 of the sub-millisecond ones is measured
        self._rss_at = 0.0  # perf_counter of the last reading (see TaskRunner._measure)
        self._children = ChildPool(concurrency, preload)
        self._busy_children: dict = {}  # child -> (Running, memory limit) while it runs
        self._child_watch: asyncio.TimerHandle | None = None

    # -- lifecycle ----------------------------------------------------------------------

    def stop(self, hurry: bool = False) -> None:
        """Ask the worker to drain (thread-safe). ``hurry`` skips the grace period."""
        loop = self._loop
        if loop is None:
            self._stopping = True
            return
        loop.call_soon_threadsafe(self._request_stop, hurry)

    def _request_stop(self, hurry: bool = False) -> None:
        if self._stopping:
            hurry = True
        self._stopping = True
        assert self._stop_event and self._hurry and self._slot_free
        self._stop_event.set()
        self._slot_free.set()  # end a claim's gathering
        if hurry:
            self._hurry.set()

    async def run(self) -> WorkerStats:
        """Run until stopped (or, with ``burst``, until the queues are empty)."""
        self._loop = loop = asyncio.get_running_loop()
        self._context = contextvars.copy_context()  # each run gets a copy (TaskRunner)
        self._context.run(_current.set, None)
        self._stop_event, self._hurry = asyncio.Event(), asyncio.Event()
        self._slot_free = asyncio.Event()
        self._closed = asyncio.Event()
        if self._stopping:
            self._stop_event.set()
        broker = self._broker = self._core.new_broker()
        broker = self._broker = hosted(broker, self._core, self.queues, self.broker_process)
        await broker.open()
        await declare(self._core, broker)
        retry = StoredRetry(self._policies)  # an operator's retry overrides win
        with contextlib.suppress(BrokerError):
            await retry.refresh(broker)
        self._core.attach(loop, broker)
        if broker.capabilities.handoff and isinstance(broker, HandoffReceiver):
            broker.on_handoff = self._handed
        self._lanes_open()
        gc_saved = gctune.tune() if self._tune_gc else None  # all imported by now
        if self._signals:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self._request_stop)
        watch = stall.LoopWatch(loop, self._running, self.stats, stall.STALL_AFTER)
        watch.start()  # says which task holds the loop, while one does
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._flush_loop())
                tg.create_task(self._heartbeat_loop())
                tg.create_task(retry.keep(broker, self._closed))
                tg.create_task(
                    keep_schedules(self._core, self.queues, broker, self._stop_event, self._closed)
                )
                try:
                    await self._claim_loop()
                    await self._drain()
                finally:
                    # Background jobs end by flag, not by cancellation: a cancel landing
                    # inside a driver call could be swallowed there and hang the group.
                    self._closed.set()
                    self._outbox.wanted.set()
            self._take_lane_done()
            if not await self._flush():
                log.warning(
                    "could not reach the broker at shutdown: %d acks and verdicts not "
                    "recorded; those tasks will run again after their lease",
                    len(self._outbox),
                )
            await self._metrics.flush(broker)
        finally:
            watch.stop()
            if self._kick is not None:
                self._kick.cancel()
                self._kick = None
            self._core.detach(loop)
            if self._signals:
                for sig in (signal.SIGTERM, signal.SIGINT):
                    loop.remove_signal_handler(sig)
            self._threads.shutdown()
            if self._child_watch is not None:
                self._child_watch.cancel()
                self._child_watch = None
            self._children.close()
            await broker.close()
            if gc_saved is not None:
                gctune.untune(gc_saved)
        return self.stats

    # -- claiming -----------------------------------------------------------------------

    async def _claim_loop(self) -> None:
        broker = self._broker
        assert broker and self._stop_event and self._slot_free
        last_metrics = time.monotonic()
        backlog = False  # the last claim got all it asked for: more is likely queued
        while not self._stopping:
            if self._lanes_on:  # the handler threads claim for themselves meanwhile
                await self._lanes_wait()
                if time.monotonic() - last_metrics > 2.0:
                    last_metrics = time.monotonic()
                    await self._metrics.flush(broker)
                continue
            free = self.concurrency - len(self._running)
            if self._held:  # claimed ahead (offload.worker.ahead): no round trip for these
                left = self._held_wait()
                if left <= 0:
                    self._give_back_held()  # no slot came free in time
                elif free > 0:
                    self._start_held(free)
                    if self._ahead_wanted(backlog):
                        backlog = await self._claim_ahead(min(self.concurrency, CLAIM_BATCH))
                    await asyncio.sleep(0)
                else:
                    await self._idle(False, left)
                continue
            if backlog and 0 < free < self._claim_at:
                await self._gather()
                free = self.concurrency - len(self._running)
            if free > 0:
                ask = min(free, CLAIM_BATCH)
                t0 = time.monotonic()
                try:
                    claimed = await broker.claim(self.queues, ask)
                except BrokerError as exc:
                    await self._sleep_or_stop(self._outage(exc))
                    continue
                if self._down_since is not None:
                    log.warning(
                        "broker reachable again after %.1fs; claiming resumed",
                        time.monotonic() - self._down_since,
                    )
                    self._down_since, self._backoff = None, 0.0
                self._claim_rtt += (time.monotonic() - t0 - self._claim_rtt) / 8
                backlog = len(claimed) >= ask
                if claimed:
                    self.stats.claimed += len(claimed)
                    self._fed_threads = False
                    for c in claimed:
                        self._start(c)
                    if backlog and self._fed_threads:
                        self._lanes_start()
                    if time.monotonic() - last_metrics > 2.0:
                        last_metrics = time.monotonic()
                        await self._metrics.flush(broker)
                    await asyncio.sleep(0)  # let the handlers we just started run
                    if self._ahead_wanted(backlog):
                        backlog = await self._claim_ahead(min(self.concurrency, CLAIM_BATCH))
                    continue
                if self.burst and not self._running:
                    try:
                        if await self._flush() and await self._queues_empty():
                            return
                    except BrokerError as exc:
                        await self._sleep_or_stop(self._outage(exc))
                        continue
            await self._idle(free > 0)

    async def _gather(self) -> None:
        """Wait until a quarter of the slots are free, or twice the claim's round trip
        (bounded), so that one claim fetches work for several freed slots. Only while a
        backlog waits; nothing is claimed meanwhile, so no task waits once claimed."""
        assert self._slot_free is not None and self._loop is not None
        self._wake_at = self._claim_at
        self._slot_free.clear()
        wait = min(GATHER_MAX, max(GATHER_MIN, 2 * self._claim_rtt))
        timer = self._loop.call_later(wait, self._slot_free.set)
        try:
            await self._slot_free.wait()
        finally:
            timer.cancel()
            self._wake_at = 1

    def _handed(self, claimed: list[Claimed]) -> bool:
        """Start tasks an enqueue leased to this worker while it waited (a hand-off), right
        where the wait read them: no claim round trip, no loop turn in between."""
        if self._stopping or len(self._running) + len(claimed) > self.concurrency:
            return False  # the broker releases them at once, uncounted, for any worker
        self.stats.claimed += len(claimed)
        for c in claimed:
            self._start(c)
        return True

    def _outage(self, exc: BrokerError) -> float:
        """One log line when the broker goes away (and one when it is back), not one per
        retry; retries back off from 0.1 s to 2 s."""
        if self._down_since is None:
            self._down_since = time.monotonic()
            log.warning(
                "broker unreachable, retrying with backoff (running tasks go on; "
                "their acks wait): %s",
                exc,
            )
        self._backoff = min(2.0, max(0.1, self._backoff * 2))
        return self._backoff

    async def _idle(self, can_claim: bool, timeout: float | None = None) -> None:
        """Sleep until a slot frees, new work may be there, or we are asked to stop."""
        assert self._broker and self._stop_event and self._slot_free
        self._slot_free.clear()
        waiters = [
            asyncio.ensure_future(self._stop_event.wait()),
            asyncio.ensure_future(self._slot_free.wait()),
        ]
        if can_claim:
            timeout = 0.05 if self.burst else 1.0
            waiters.append(asyncio.ensure_future(self._broker.wait(self.queues, timeout)))
        try:
            done, _ = await asyncio.wait(
                waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            for w in waiters:
                w.cancel()
            # Only an unfinished broker wait must settle before the next claim; the event
            # waits end on their own, and the claim that follows a wake-up goes first.
            if can_claim and not waiters[-1].done():
                await asyncio.gather(waiters[-1], return_exceptions=True)
        for w in done:
            exc = w.exception() if not w.cancelled() else None
            if isinstance(exc, BrokerError):
                await self._sleep_or_stop(self._outage(exc))
            elif exc is not None:
                raise exc

    async def _queues_empty(self) -> bool:
        assert self._broker
        for q in self.queues:
            s = await self._broker.stats(q)
            if not s.paused and (s.ready or s.scheduled or s.leased):
                return False
        return True

    async def _sleep_or_stop(self, seconds: float) -> None:
        assert self._stop_event
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop_event.wait(), seconds)

    # -- background jobs ------------------------------------------------------------------

    async def _flush_loop(self) -> None:
        pause = 0.0
        while not self._closed.is_set():
            await self._outbox.wanted.wait()
            self._outbox.wanted.clear()
            t0 = time.monotonic()
            if await self._flush():
                pause = 0.0
                if self._running and not self._closed.is_set():
                    took = time.monotonic() - t0
                    await asyncio.sleep(min(ACK_PAUSE_MAX, max(ACK_PAUSE, 2 * took)))
            else:  # the broker is away: keep the acks and try again, backing off
                pause = min(2.0, max(0.1, pause * 2))
                await self._sleep_or_stop(pause)
                self._outbox.wanted.set()

    async def _flush(self) -> bool:
        return await self._outbox.flush(self._broker)  # type: ignore[arg-type]

    async def _heartbeat_loop(self) -> None:
        assert self._broker is not None and self._closed is not None
        idle_period = max(0.02, min(p.lease for p in self._policies.values()) / 3)
        await heartbeat(self._broker, self._running, self._closed, idle_period, self._outage)

    # -- draining -------------------------------------------------------------------------

    async def _drain(self) -> None:
        assert self._hurry and self._slot_free
        self._give_back_held()
        deadline = time.monotonic() + self.grace
        while not self._hurry.is_set():  # (a lane's claim out holds tasks not in _running)
            halted = self._lanes_halt()
            left = deadline - time.monotonic()
            if (halted and not self._running) or left <= 0:
                break
            self._slot_free.clear()
            waiters = [
                asyncio.ensure_future(self._slot_free.wait()),
                asyncio.ensure_future(self._hurry.wait()),
            ]
            # look again soon: nothing signals a lane claim's return, and a lane's run frees
            # its slot on its thread (a drain waiting the grace on it took 30 s)
            left = min(left, 0.005 if not halted else DRAIN_POLL)
            await asyncio.wait(waiters, timeout=left, return_when=asyncio.FIRST_COMPLETED)
            for w in waiters:
                w.cancel()
        self._take_lane_done()
        await self._flush()
        if self._running:
            runs = list(self._running.values())
            self._running.clear()
            for r in runs:
                if r.info is not None:
                    r.info.cancel()
                if r.future is not None:
                    r.future.cancel()
            leases = [r.claim.lease for r in runs if not r.lost]
            if leases:
                try:
                    await self._broker.release(leases)  # type: ignore[union-attr]
                except BrokerError as exc:
                    log.warning(
                        "could not release %d tasks (they run again after their lease): %s",
                        len(leases),
                        exc,
                    )
            self.stats.released += len(leases)
            log.info("released %d unfinished tasks for other workers", len(leases))
