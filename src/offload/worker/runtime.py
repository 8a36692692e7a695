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
import contextlib
import logging
import signal
import time
import traceback
from collections.abc import Sequence
from typing import Any

import msgspec

from .. import hooks as _hooks
from ..app import App
from ..brokers import broker_from_url
from ..brokers.base import Broker, Claimed
from ..core import envelope as _env
from ..errors import BadArguments, BrokerError, Fail, Retry
from ..task import TaskFunction, TaskInfo, _current
from .eager import Resumed
from .leases import heartbeat
from .metrics import MetricsBuffer
from .outbox import Outbox
from .state import Running, WorkerStats
from .threads import ThreadPool

__all__ = ["Worker", "WorkerStats"]

log = logging.getLogger("offload.worker")

CLAIM_BATCH = 250  # most tasks claimed per round trip


class Worker:
    """Runs the tasks of ``queues`` (default: all of the App's) with at most ``concurrency``
    in flight. Async handlers run on the worker's event loop, plain functions on threads."""

    def __init__(
        self,
        app: App,
        *,
        queues: Sequence[str] | None = None,
        concurrency: int = 32,
        grace: float = 30.0,
        burst: bool = False,
        hooks: _hooks.Hooks | None = None,
        install_signal_handlers: bool = False,
    ) -> None:
        self.app = app
        self.queues = list(queues) if queues else sorted(app.queues)
        for q in self.queues:
            app._policy(q)  # UnknownQueue names the bad one
        if concurrency < 1:
            raise BadArguments(f"concurrency {concurrency!r} must be 1 or more")
        self.concurrency = concurrency
        self.grace = grace
        self.burst = burst
        self.hooks = hooks or _hooks.Hooks()
        self.stats = WorkerStats()
        self._signals = install_signal_handlers
        self._running: dict[str, Running] = {}
        self._outbox = Outbox()
        self._metrics = MetricsBuffer()
        self._unknown_logged: set[str] = set()
        self._broker: Broker | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping = False
        self._stop_event: asyncio.Event | None = None
        self._hurry: asyncio.Event | None = None
        self._slot_free: asyncio.Event | None = None
        self._closed = asyncio.Event()
        self._down_since: float | None = None
        self._backoff = 0.0
        self._threads = ThreadPool(concurrency)
        self._policies = {q: app._policy(q) for q in self.queues}

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
        assert self._stop_event and self._hurry
        self._stop_event.set()
        if hurry:
            self._hurry.set()

    async def run(self) -> WorkerStats:
        """Run until stopped (or, with ``burst``, until the queues are empty)."""
        self._loop = loop = asyncio.get_running_loop()
        self._stop_event, self._hurry = asyncio.Event(), asyncio.Event()
        self._slot_free = asyncio.Event()
        self._closed = asyncio.Event()
        if self._stopping:
            self._stop_event.set()
        broker = self._broker = broker_from_url(self.app.broker_url)
        await broker.open()
        await broker.declare([self.app._policy(q) for q in sorted(self.app.queues)])
        self.app._loop_brokers[loop] = broker
        if broker.capabilities.handoff:
            broker.on_handoff = self._handed  # type: ignore[attr-defined]
        if self._signals:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self._request_stop)
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._flush_loop())
                tg.create_task(self._heartbeat_loop())
                try:
                    await self._claim_loop()
                    await self._drain()
                finally:
                    # Background jobs end by flag, not by cancellation: a cancel landing
                    # inside a driver call could be swallowed there and hang the group.
                    self._closed.set()
                    self._outbox.wanted.set()
            if not await self._flush():
                log.warning(
                    "broker unreachable at shutdown: %d acks not recorded; those "
                    "tasks will run again after their lease",
                    len(self._outbox.acks),
                )
            await self._metrics.flush(broker)
        finally:
            self.app._loop_brokers.pop(loop, None)
            if self._signals:
                for sig in (signal.SIGTERM, signal.SIGINT):
                    loop.remove_signal_handler(sig)
            self._threads.shutdown()
            await broker.close()
        return self.stats

    # -- claiming -----------------------------------------------------------------------

    async def _claim_loop(self) -> None:
        broker = self._broker
        assert broker and self._stop_event and self._slot_free
        last_metrics = time.monotonic()
        while not self._stopping:
            free = self.concurrency - len(self._running)
            if free > 0:
                try:
                    claimed = await broker.claim(self.queues, min(free, CLAIM_BATCH))
                except BrokerError as exc:
                    await self._sleep_or_stop(self._outage(exc))
                    continue
                if self._down_since is not None:
                    log.warning(
                        "broker reachable again after %.1fs; claiming resumed",
                        time.monotonic() - self._down_since,
                    )
                    self._down_since, self._backoff = None, 0.0
                if claimed:
                    self.stats.claimed += len(claimed)
                    for c in claimed:
                        self._start(c)
                    if time.monotonic() - last_metrics > 2.0:
                        last_metrics = time.monotonic()
                        await self._metrics.flush(broker)
                    await asyncio.sleep(0)  # let the handlers we just started run
                    continue
                if self.burst and not self._running:
                    try:
                        if await self._flush() and await self._queues_empty():
                            return
                    except BrokerError as exc:
                        await self._sleep_or_stop(self._outage(exc))
                        continue
            await self._idle(free > 0)

    def _handed(self, claimed: list[Claimed]) -> bool:
        """Start tasks an enqueue leased to this worker while it waited (a hand-off), right
        where the wait read them: no claim round trip, no loop turn in between."""
        if self._stopping or len(self._running) + len(claimed) > self.concurrency:
            return False  # the broker keeps them for our next claim (or gives them back)
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

    async def _idle(self, can_claim: bool) -> None:
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
            done, _ = await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
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

    # -- running one task -----------------------------------------------------------------

    def _start(self, c: Claimed) -> None:
        run = Running(c, None, None, time.perf_counter())
        self._running[c.id] = run
        self.hooks.claimed(c)
        try:
            env = _env.decode(c.payload)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            self._finish_dead(run, f"undecodable payload: {exc}", "")
            return
        tf = self.app._tasks.get(env.task)
        if tf is None:
            self._unknown(run, env.task)
            return
        policy = self._policies[c.queue].retry
        if c.attempt >= 2 and policy.exhausted(c.attempt - 2, c.now - c.first_attempt_at):
            # Earlier attempts ended without a verdict: the worker running them died.
            self._finish_dead(
                run,
                f"retry policy exhausted after {c.attempt - 1} attempts whose worker "
                "died or lost its lease before finishing (crash, kill -9, or out of memory?)",
                "",
            )
            return
        try:
            args, kwargs = tf.convert_args(env.args, env.kwargs)
        except BadArguments as exc:
            self._finish_dead(run, f"BadArguments: {exc}", "")
            return
        headers = env.headers
        deadline = None
        if headers:
            raw = headers.get(_env.DEADLINE)
            if raw is not None:
                try:
                    deadline = float(raw)
                except ValueError:
                    log.warning("task %s: ignoring a bad deadline header %r", c.id, raw)
        info = TaskInfo(c.id, tf.name, c.queue, c.name, c.attempt, headers, deadline)
        run.task, run.info = tf, info
        self.hooks.started(info)
        if tf.is_async:
            try:
                coro = tf.fn(*args, **kwargs)
            except TypeError as exc:
                # Raised by the call itself, before any handler code: a binding error.
                self._finish_dead(run, f"BadArguments: {tf.name}{tf.signature}: {exc}", "")
                return
            self._run_eager(run, coro)
        else:
            self._threads.submit(lambda: self._run_thread(run, tf, args, kwargs))

    def _run_eager(self, run: Running, coro: Any) -> None:
        """Run an async handler's first step right here. Most handlers either finish in it
        (no Task is ever made: a fifth of a no-op task's cost) or reach their first real
        await; only then does a Task take over, resuming exactly where it stopped (what
        Python 3.12 calls an eager task)."""
        token = _current.set(run.info)
        tt = time.thread_time
        t0 = tt()
        try:
            first = coro.send(None)
        except StopIteration:
            self._done(run, None, "", tt() - t0)
            return
        except BaseException as exc:
            self._done(run, exc, traceback.format_exc(), tt() - t0)
            return
        finally:
            _current.reset(token)
        cpu = tt() - t0
        token = _current.set(run.info)  # the Task copies the context, with it set
        try:
            run.future = self._loop.create_task(self._continue(run, coro, first, cpu))  # type: ignore[union-attr]
        finally:
            _current.reset(token)

    async def _continue(self, run: Running, coro: Any, first: Any, cpu: float) -> None:
        resumed = Resumed(coro, first, cpu)
        try:
            await resumed
        except asyncio.CancelledError as exc:
            if self._running.get(run.claim.id) is not run:
                return  # cancelled by a hurried drain: released, not failed
            self._done(run, exc, traceback.format_exc(), resumed.cpu)
        except BaseException as exc:
            self._done(run, exc, traceback.format_exc(), resumed.cpu)
        else:
            self._done(run, None, "", resumed.cpu)

    def _run_thread(self, run: Running, tf: TaskFunction, args: list, kwargs: dict) -> None:
        token = _current.set(run.info)
        c0 = time.thread_time()
        try:
            tf.fn(*args, **kwargs)
        except TypeError as exc:
            if exc.__traceback__ is not None and exc.__traceback__.tb_next is None:
                # raised by the call itself, not inside the handler: a binding error
                exc = BadArguments(f"{tf.name}{tf.signature}: {exc}")
            result = (exc, traceback.format_exc())
        except BaseException as exc:
            result = (exc, traceback.format_exc())
        else:
            result = (None, "")
        finally:
            _current.reset(token)
        cpu = time.thread_time() - c0
        loop = self._loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._done, run, result[0], result[1], cpu)

    def _done(self, run: Running, exc: BaseException | None, tb: str, cpu: float) -> None:
        """Back on the loop: decide the task's fate."""
        if self._running.get(run.claim.id) is not run:
            return  # already released by a hurried drain
        wall = time.perf_counter() - run.started
        tf = run.task
        assert tf is not None
        self._metrics.add(tf.name, wall, cpu, failed=exc is not None)
        if exc is None:
            self._finish_ack(run)
        elif isinstance(exc, BadArguments):
            self._finish_dead(run, f"BadArguments: {exc}", "")
        elif isinstance(exc, Fail):
            self._finish_dead(run, f"Fail: {exc}", tb)
        elif isinstance(exc, Retry):
            self._finish_retry(run, exc.after, f"Retry: {exc}", tb)
        else:
            self._finish_retry(run, None, f"{type(exc).__qualname__}: {exc}", tb)

    def _unknown(self, run: Running, name: str) -> None:
        if name not in self._unknown_logged:
            self._unknown_logged.add(name)
            log.warning(
                "task function %r is not registered in app %r on this worker; releasing "
                "it for other workers (dead-lettered once its retry policy is exhausted)",
                name,
                self.app.name,
            )
        self._finish_retry(
            run,
            None,
            f"unknown task function {name!r}: no worker that claimed it has it "
            "registered (deploy the code that defines it, or delete the task)",
            "",
        )

    # -- verdicts ---------------------------------------------------------------------------

    def _finish_ack(self, run: Running) -> None:
        self._forget(run)
        self.stats.succeeded += 1
        if not run.lost:
            self._outbox.ack(run.claim.lease)
        if run.info is not None:
            self.hooks.succeeded(run.info)

    def _finish_retry(self, run: Running, after: float | None, error: str, tb: str) -> None:
        c = run.claim
        policy = self._policies[c.queue].retry
        age = c.now - c.first_attempt_at + (time.perf_counter() - run.started)
        if policy.exhausted(c.attempt - 1, age):
            self._finish_dead(
                run, f"{error} (retry policy exhausted after {c.attempt} attempts)", tb
            )
            return
        delay = policy.backoff(c.attempt) if after is None else max(0.0, float(after))
        self._forget(run)
        self.stats.retried += 1
        if not run.lost:
            lease, err = c.lease, _trim(error)
            self._spawn_verdict(lambda: self._broker.retry(lease, delay, err))  # type: ignore[union-attr]
        self.hooks.retried(c, delay, error)

    def _finish_dead(self, run: Running, error: str, tb: str) -> None:
        self._forget(run)
        self.stats.dead += 1
        if not run.lost:
            lease, err = run.claim.lease, _trim(error)
            self._spawn_verdict(lambda: self._broker.dead_letter(lease, err, tb))  # type: ignore[union-attr]
        self.hooks.dead(run.claim, error)

    def _forget(self, run: Running) -> None:
        self._running.pop(run.claim.id, None)
        if run.info is not None and run.info._ctx is not None:
            run.info.cancel()  # release the context's deadline timer
        self._slot_free.set()  # type: ignore[union-attr]

    def _spawn_verdict(self, send: Any) -> None:
        self._outbox.verdict(send)

    # -- background jobs ------------------------------------------------------------------

    async def _flush_loop(self) -> None:
        pause = 0.0
        while not self._closed.is_set():
            await self._outbox.wanted.wait()
            self._outbox.wanted.clear()
            if await self._flush():
                pause = 0.0
            else:  # the broker is away: keep the acks and try again, backing off
                pause = min(2.0, max(0.1, pause * 2))
                await self._sleep_or_stop(pause)
                self._outbox.wanted.set()

    async def _flush(self) -> bool:
        return await self._outbox.flush(self._broker)  # type: ignore[arg-type]

    async def _heartbeat_loop(self) -> None:
        assert self._broker is not None and self._closed is not None
        period = max(0.02, min(p.lease for p in self._policies.values()) / 3)
        await heartbeat(self._broker, self._running, self._closed, period, self._outage)

    # -- draining -------------------------------------------------------------------------

    async def _drain(self) -> None:
        assert self._hurry and self._slot_free
        deadline = time.monotonic() + self.grace
        while self._running and not self._hurry.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                break
            self._slot_free.clear()
            waiters = [
                asyncio.ensure_future(self._slot_free.wait()),
                asyncio.ensure_future(self._hurry.wait()),
            ]
            await asyncio.wait(waiters, timeout=left, return_when=asyncio.FIRST_COMPLETED)
            for w in waiters:
                w.cancel()
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


def _trim(text: str, limit: int = 2000) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."
