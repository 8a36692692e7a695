"""Running one claimed task: decode it, start its handler (on the loop or a thread), hold it
to its timeout, and turn how it ended into a verdict (:mod:`offload.core.verdict`).

Nothing a task does may crash or wedge the worker: every step that touches the task's own
code or data is guarded, and a verdict that cannot be computed still frees the slot and
tells the broker something true ("the worker could not ...").
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import resource
import sys
import threading
import time
import traceback
from contextvars import Context
from types import CoroutineType
from typing import TYPE_CHECKING, Any

import msgspec

from .. import calls as _calls
from ..brokers.base import Broker, Claimed
from ..core import envelope as _env
from ..core.resumed import Resumed
from ..core.verdict import Verdict, describe, judge, judge_expired_claim, safe_text
from ..errors import BadArguments, TaskTimeout
from ..hooks import Hooks
from ..task import TaskFunction, TaskInfo, _current
from .ahead import WALL_WEIGHT
from .processes import ORIGIN_ID, _prior_attempts
from .state import Running, _deadline, _lease_length
from .threads import KICK_AFTER

TICK = KICK_AFTER / 2  # seconds between the loop's looks at its handler threads

if TYPE_CHECKING:
    from .runtime import Worker

__all__ = ["TaskRunner"]

log = logging.getLogger("offload.worker")

_maxrss, _SELF = resource.getrusage, resource.RUSAGE_SELF
UNKNOWN_RELEASE_DELAY = 1.0  # seconds a task of an unknown function waits for a newer worker
FOREIGN_RELEASE_DELAY = 5.0  # seconds another app's task waits before anyone claims it again
RSS_EVERY = 0.001  # seconds: the high-water mark is read at most this often for short runs
RSS_ALWAYS = 0.01  # seconds: a run at least this long is always measured
# Python 3.12+: a handler's Task runs its first step at once, as the claim loop's call
_EAGER: dict[str, Any] = {"eager_start": True} if sys.version_info >= (3, 12) else {}


class TaskRunner:
    """The task-running half of :class:`~offload.worker.runtime.Worker` (a mixin: it
    shares the worker's state, it adds no state of its own)."""

    # -- starting -------------------------------------------------------------------------

    def _start(self: Worker, c: Claimed) -> None:
        run = Running(c, None, None, time.perf_counter())
        run.rss_base = self._maxrss  # KiB: the worker's high-water mark, as last read
        run.lease_length = _lease_length(c, self._policies[c.queue].lease)
        run.lease_end = time.monotonic() + run.lease_length
        self._running[c.id] = run
        self._begin(run)

    def _begin(self: Worker, run: Running) -> None:
        if type(self.hooks) is not Hooks:
            self._hook("claimed", run.claim)
        try:
            self._prepare(run)
        except Exception as exc:  # a bug of ours must cost this task, not the worker
            log.exception("task %s: the worker could not start it", run.claim.id)
            self._done(run, exc, traceback.format_exc(), 0.0)

    def _prepare(self: Worker, run: Running) -> None:
        c = run.claim
        try:
            env = _env.decode(c.payload)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            self._send(run, Verdict("dead", error=safe_text(f"undecodable payload: {exc}")))
            return
        if env.app and env.app != self._core.name:
            self._foreign(run, env.app, env.task)
            return
        if env.headers and _calls.past_deadline(env.headers, c.now):
            self._forget(run)  # its caller gave up: dropped unrun, counted as expired
            self._outbox.ack(c.lease)
            self._metrics.count(env.task, "expired")
            return
        policy = self._policies[c.queue]
        if c.expired:
            gone = judge_expired_claim(policy.retry, c.attempt, c.now - c.first_attempt_at)
            if gone is not None:
                self._send(run, gone)
                return
        tf = self._core.tasks.get(env.task)
        if tf is None:
            self._unknown(run, env.task, env.version)
            return
        try:
            args, kwargs = tf.convert_args(env.args, env.kwargs)
        except BadArguments as exc:
            self._send(run, Verdict("dead", error=safe_text(f"BadArguments: {exc}")))
            return
        attempt = c.attempt
        if env.headers:
            attempt += _prior_attempts(env.headers)  # moved here from a smaller pool
        info = TaskInfo(c.id, tf.name, c.queue, c.name, attempt, env.headers, None)
        if env.headers:
            info._deadline = _deadline(c.id, env.headers)
        run.task, run.info = tf, info
        if type(self.hooks) is not Hooks:
            self._hook("started", info)
        timeout = tf.timeout if tf.timeout is not None else policy.timeout
        if timeout is not None:
            run.timer = self._loop.call_later(timeout, self._time_out, run, timeout)
        if tf.service is not None and tf.service.executor == "process":
            run.future = self._loop.create_task(self._run_in_child(run, tf))
        elif tf.is_async:
            # Every run gets a context of its own, a copy of the worker's: a context
            # variable one handler sets (a request id, a tenant) is never the next one's.
            ctx = self._context.copy()
            try:
                coro = ctx.run(tf.fn, *args, **kwargs)
            except TypeError as exc:
                # Raised by the call itself, before any handler code: a binding error.
                self._done(run, BadArguments(f"{tf.name}{tf.signature}: {exc}"), "", 0.0)
                return
            self._run_async(run, coro, ctx)
        else:
            self._fed_threads = True
            ctx = self._context.copy()  # as above: a handler thread runs many tasks
            self._threads.submit(lambda: ctx.run(self._run_thread, run, tf, args, kwargs))
            if self._kick is None:
                self._kick = self._loop.call_later(TICK, self._tick)

    def _tick(self: Worker) -> None:
        """Every TICK seconds while handler threads work: judge what they finished (they
        wake the loop only for a batch, or when out of jobs), and kick the thread pool."""
        self._kick = None
        self._take_results()
        self._take_lane_done()
        if self._threads.kick():
            self._kick = self._loop.call_later(TICK, self._tick)

    def _run_async(self: Worker, run: Running, coro: Any, ctx: Context) -> None:
        """Run an async handler on a Task of its own, in the run's context ``ctx``, from
        its first step on: ``asyncio.current_task()`` is the handler's wherever it asks
        (``asyncio.timeout()``, anyio's scopes and client libraries' read timeouts take the
        task they start in, and cancel it; run in the claim loop's, a first step cancelled
        the worker). Python 3.12 and later start the Task eagerly: a handler that never
        awaits finishes right here, with no turn of the loop."""
        ctx.run(_current.set, run.info)
        if isinstance(coro, CoroutineType):
            main = self._continue(run, coro)
        elif inspect.isawaitable(coro):  # e.g. a Future: wait for it on a Task
            main = self._await_result(run, coro, 0.0)
        else:
            self._done(run, None, "", 0.0)
            return
        run.future = asyncio.Task(main, loop=self._loop, context=ctx, **_EAGER)

    def _finish_value(self: Worker, run: Running, value: Any, cpu: float) -> None:
        """A handler returned ``value``; an awaitable one (a coroutine returned by a
        wrapper that is not ``async def`` itself) is awaited before the task counts as
        done, never acked unrun, on a Task in the run's context (this one's)."""
        if value is not None and inspect.isawaitable(value):
            run.future = self._loop.create_task(self._await_result(run, value, cpu))
        else:
            if run.info is not None:
                run.info._result = value
            self._done(run, None, "", cpu)

    async def _await_result(self: Worker, run: Running, awaitable: Any, cpu: float) -> None:
        try:
            value = await awaitable
        except asyncio.CancelledError as exc:
            self._cancelled(run, exc, cpu)
        except BaseException as exc:
            self._done(run, exc, traceback.format_exc(), cpu)
        else:
            self._finish_value(run, value, cpu)

    async def _continue(self: Worker, run: Running, coro: Any) -> None:
        resumed = Resumed(coro)  # the handler's steps, timed: their sum is its CPU figure
        try:
            value = await resumed
        except asyncio.CancelledError as exc:
            self._cancelled(run, exc, resumed.cpu)
        except BaseException as exc:
            self._done(run, exc, traceback.format_exc(), resumed.cpu)
        else:
            self._finish_value(run, value, resumed.cpu)

    def _cancelled(self: Worker, run: Running, exc: BaseException, cpu: float) -> None:
        if self._running.get(run.claim.id) is not run:
            return  # cancelled by a hurried drain (released) or after its timeout (judged)
        self._done(run, exc, traceback.format_exc(), cpu)

    def _run_thread(self: Worker, run: Running, tf: TaskFunction, args: list, kwargs: dict) -> None:
        if self._running.get(run.claim.id) is not run:
            return  # released by a hurried drain while it waited for a thread: not run
        run.thread = threading.get_ident()
        if run.lane:
            run.started = time.perf_counter()  # its wall time: not the wait in its batch
        token = _current.set(run.info)
        c0 = time.thread_time()
        try:
            value = tf.fn(*args, **kwargs)
            if inspect.isawaitable(value):
                # an async handler behind a plain wrapper: run it on the worker's loop
                value = asyncio.run_coroutine_threadsafe(_awaited(value), self._loop).result()
        except TypeError as exc:
            if exc.__traceback__ is not None and exc.__traceback__.tb_next is None:
                # raised by the call itself, not inside the handler: a binding error
                exc = BadArguments(f"{tf.name}{tf.signature}: {exc}")
            result = (exc, _format_exc())
        except BaseException as exc:
            if isinstance(exc, TaskTimeout) and run.timeout_error is not None:
                exc = run.timeout_error  # raised in this thread by _time_out
            result = (exc, _format_exc())
        else:
            run.info._result = value  # type: ignore[union-attr]
            result = (None, "")
        finally:
            run.thread = None
            _current.reset(token)
        cpu = time.thread_time() - c0
        if result[0] is None:
            if run.lane:
                self._lane_ended(run, cpu)  # counted and acked by the lane or the tick
                return
            if self._put_blocking is not None and _calls.RESULT_TTL in run.info.headers:
                run.result_stored = self._store_here(run)
        # Back to the loop in batches: a wake-up of the loop costs this thread a wait for
        # the GIL. Wake it for a batch (enough to claim for) or when this thread runs out
        # of jobs; else the loop's TICK takes the results. Append before reading the flag;
        # the loop clears the flag before it reads the results: none is left behind.
        results = self._results
        results.append((run, result[0], result[1], cpu))
        if not self._results_wake and (
            len(results) >= self._claim_at or not self._threads.pending()
        ):
            self._results_wake = True
            loop = self._loop
            if loop is not None and not loop.is_closed():
                with contextlib.suppress(RuntimeError):
                    loop.call_soon_threadsafe(self._take_results)

    def _take_results(self: Worker) -> None:
        """On the loop: judge every result the handler threads reported since the last
        call (``_done`` never raises)."""
        self._results_wake = False
        results = self._results
        while results:
            self._done(*results.popleft())

    # -- verdicts -------------------------------------------------------------------------

    def _done(self: Worker, run: Running, exc: BaseException | None, tb: str, cpu: float) -> None:
        """Back on the loop: decide the task's fate. Never raises."""
        if self._running.get(run.claim.id) is not run:
            return  # already released by a hurried drain, or judged after its timeout
        try:
            wall = time.perf_counter() - run.started
            self._measure(run, wall, cpu, exc is not None)
            c = run.claim
            age = c.now - c.first_attempt_at + wall
            attempt = run.info.attempt if run.info is not None else c.attempt
            verdict = judge(exc, tb, self._policies[c.queue].retry, attempt, age)
        except BaseException as bug:
            log.exception("task %s: the worker could not judge how it ended", run.claim.id)
            verdict = Verdict(
                "retry",
                1.0,
                safe_text(f"the worker could not judge how this task ended: {describe(bug)}"),
            )
        self._send(run, verdict)

    def _measure(self: Worker, run: Running, wall: float, cpu: float, failed: bool) -> None:
        if run.task is not None:
            rss = run.rss
            self._rss_tick += 1
            if rss is None:
                end = run.started + wall
                fresh = end - self._rss_at < RSS_EVERY  # the last reading is that recent
                if wall >= RSS_ALWAYS and fresh:
                    # that reading covers a run of 10 ms or more: when the loop is the
                    # bottleneck every run's wall passes 10 ms (it includes the wait for
                    # the loop), and a reading for each cost the loop 1 µs per task
                    rss = (self._maxrss - run.rss_base) * 1024
                elif not self._rss_tick & 15 or (wall >= RSS_EVERY and not fresh):
                    # approximate: the worker's high-water growth meanwhile (its next
                    # run's base is this reading). The system call costs a few percent
                    # of a task with a quick body: runs of 10 ms and more get a reading
                    # at most a millisecond old, the rest at most one a millisecond, and
                    # runs under one are sampled, one in 16
                    self._rss_at = end
                    self._maxrss = now = _maxrss(_SELF).ru_maxrss
                    rss = (now - run.rss_base) * 1024
            self._wall_avg += (wall - self._wall_avg) * WALL_WEIGHT  # see .ahead
            self._metrics.add(run.task.name, wall, cpu, failed=failed, rss=rss)

    def _send(self: Worker, run: Running, verdict: Verdict) -> None:
        """Free the slot and queue the verdict for the broker. Never raises."""
        self._forget(run)
        c = run.claim
        if time.monotonic() > run.lease_end and not run.lost:
            log.warning(
                "task %s (%s) finished %.1fs after its lease expired, so another worker may "
                "have run it too (a handler that blocks the event loop, or a lease shorter "
                "than the task?); sending its result anyway",
                c.id,
                run.task.name if run.task else "?",
                time.monotonic() - run.lease_end,
            )
        if (run.info is None or _calls.RESULT_TTL in run.info.headers) and not (
            run.result_stored and verdict.kind == "ack"
        ):
            reply = _calls.reply_for(run.info, verdict, c.payload)  # no info: unrun, dead
            if reply is not None:  # stored before the ack: verdicts go out first
                store: Any = self._broker
                # a copy moved by on_oom answers under its original's id: its caller's
                hdrs = run.info.headers if run.info else _calls.unrun_headers(c.payload)
                rid = hdrs.get(ORIGIN_ID, c.id)
                self._outbox.verdict(lambda: store.put_result(rid, *reply), None, c.id)
        if verdict.kind == "ack":
            self.stats.succeeded += 1
            self._outbox.ack(c.lease)  # a finished run wins, even after a lost lease
            if run.info is not None and type(self.hooks) is not Hooks:
                self._hook("succeeded", run.info)
            return
        broker: Broker = self._broker  # type: ignore[assignment]
        lease = c.lease
        if verdict.kind == "retry":
            self.stats.retried += 1
            if not run.lost:
                self._outbox.verdict(
                    lambda: broker.retry(lease, verdict.delay, verdict.error),
                    lambda: broker.retry(lease, verdict.delay, _fallback(verdict)),
                    c.id,
                )
            self._hook("retried", c, verdict.delay, verdict.error)
        else:
            self.stats.dead += 1
            if not run.lost:
                self._outbox.verdict(
                    lambda: broker.dead_letter(lease, verdict.error, verdict.traceback),
                    lambda: broker.dead_letter(lease, _fallback(verdict), ""),
                    c.id,
                )
            self._hook("dead", c, verdict.error)

    def _forget(self: Worker, run: Running) -> None:
        self._running.pop(run.claim.id, None)
        if run.timer is not None:
            run.timer.cancel()
        if run.info is not None and run.info._ctx is not None:
            with contextlib.suppress(Exception):
                run.info.cancel()  # release the context's deadline timer
        if self.concurrency - len(self._running) >= self._wake_at:
            self._slot_free.set()

    def _unknown(self: Worker, run: Running, name: str, version: str = "") -> None:
        """A task function this worker's code does not have: most often a newer deploy's,
        sent before every worker runs the new code. Released uncounted, so a newer
        worker takes it, for ``unknown_grace`` seconds after its first attempt; only then
        dead-lettered, naming the function."""
        c = run.claim
        waited = max(0.0, c.now - c.first_attempt_at) if c.first_attempt_at else 0.0
        sent_by = f" (sent by code version {version!r})" if version else ""
        if waited < self.unknown_grace:
            if name not in self._unknown_logged:
                self._unknown_logged.add(name)
                log.warning(
                    "task function %r is not registered in app %r on this worker%s; "
                    "leaving it for a worker that has it (released, not charged) for up to "
                    "%gs after its first attempt, then dead-lettering it",
                    name,
                    self._core.name,
                    sent_by,
                    self.unknown_grace,
                )
            self._forget(run)
            self.stats.released += 1
            self._outbox.release(c.lease, UNKNOWN_RELEASE_DELAY)
            return
        self._send(
            run,
            Verdict(
                "dead",
                error=safe_text(
                    f"unknown task function {name!r}{sent_by}: no worker that claimed it in "
                    f"{self.unknown_grace:g}s has it registered (deploy the code that "
                    "defines it, then replay the dead letter; or delete it)"
                ),
            ),
        )

    def _foreign(self: Worker, run: Running, app: str, task: str) -> None:
        """Another app's task on a queue both apps use: leave it alone, uncounted."""
        if app not in self._foreign_logged:
            self._foreign_logged.add(app)
            log.warning(
                "queue %r holds tasks of app %r (e.g. %r), but this worker runs app %r: "
                "leaving them for that app's workers (released, not charged). Two apps on "
                "one broker share queue names: give each its own namespace in the broker "
                "URL (?prefix= on Redis, ?schema= on PostgreSQL, its own SQLite file)",
                run.claim.queue,
                app,
                task,
                self._core.name,
            )
        self._forget(run)
        self.stats.foreign += 1
        self._outbox.release(run.claim.lease, FOREIGN_RELEASE_DELAY)

    def _hook(self: Worker, name: str, *args: Any) -> None:
        """Call an observation hook; one that raises is logged (once per hook) and the
        task goes on as if it had not been observed."""
        try:
            getattr(self.hooks, name)(*args)
        except Exception:
            if name not in self._hook_failed:
                self._hook_failed.add(name)
                log.exception("hook %s.%s raised; ignored", type(self.hooks).__name__, name)


def _fallback(verdict: Verdict) -> str:
    """The error stored when the broker refused the full one (e.g. a text it cannot hold)."""
    head = verdict.error.encode("ascii", "backslashreplace").decode("ascii")[:200]
    return f"{head} [the full error text was refused by the broker]"


def _format_exc() -> str:
    try:
        return traceback.format_exc()
    except Exception:
        return "<the traceback could not be formatted>"


async def _awaited(value: Any) -> Any:
    return await value
