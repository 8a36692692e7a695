"""Holding a task to its timeout: an async handler's Task is cancelled, a thread handler
gets ``TaskTimeout`` raised inside it, and either is judged at once; one that does not stop
is abandoned (its slot freed, counted in ``WorkerStats.abandoned``, logged)."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from ..errors import TaskTimeout
from .state import Running

if TYPE_CHECKING:
    from .runtime import Worker

__all__ = ["TimeoutRunner"]

log = logging.getLogger("offload.worker")

ABANDON_AFTER = 2.0  # seconds a handler gets to stop after its timeout's cancel or TaskTimeout


class TimeoutRunner:
    """The timeout half of :class:`~offload.worker.runtime.Worker` (a mixin)."""

    def _time_out(self: Worker, run: Running, timeout: float) -> None:
        if self._running.get(run.claim.id) is not run:
            return
        name = run.task.name if run.task else "?"
        error = TaskTimeout(f"{name} ran longer than its timeout of {timeout:g}s")
        if run.future is not None:  # async: cancel it, and judge it now
            task = run.future
            task.cancel()
            self._done(run, error, "", 0.0)
            self._loop.call_later(ABANDON_AFTER, self._stubborn, run, task)
            return
        run.timeout_error = error
        ident = run.thread
        if ident is not None:  # a thread: raise TaskTimeout inside it, as Dramatiq does
            import ctypes  # here: only a timed-out thread needs it (0.3 MB idle)

            ctypes.pythonapi.PyThreadState_SetAsyncExc(
                ctypes.c_ulong(ident), ctypes.py_object(TaskTimeout)
            )
        run.timer = self._loop.call_later(ABANDON_AFTER, self._abandon, run, error)

    def _abandon(self: Worker, run: Running, error: TaskTimeout) -> None:
        """A thread handler still running ABANDON_AFTER seconds after its TaskTimeout
        (stuck in C code, or swallowing exceptions): its slot is freed and its thread
        replaced; whatever it does later is ignored."""
        if self._running.get(run.claim.id) is not run:
            return
        ident = run.thread
        if ident is None:  # it is ending right now; its result is on its way
            run.timer = self._loop.call_later(0.05, self._abandon, run, error)
            return
        self.stats.abandoned += 1
        self._threads.abandon(ident)
        log.warning(
            "task %s (%s) did not stop after its timeout; abandoning its thread (%d "
            "abandoned so far): its slot is free again, and whatever it does is ignored",
            run.claim.id,
            run.task.name if run.task else "?",
            self.stats.abandoned,
        )
        self._done(run, error, "", 0.0)

    def _stubborn(self: Worker, run: Running, task: asyncio.Future) -> None:
        """An async handler still running ABANDON_AFTER seconds after its timeout cancelled
        it (it swallows ``CancelledError``): its slot is free and its verdict sent already;
        nothing can stop a coroutine from outside, so it is counted, logged, and left to
        run. The worker's exit waits for it only briefly (:mod:`offload.worker.runner`)."""
        if task.done():
            return
        self.stats.abandoned += 1
        log.warning(
            "task %s (%s) still runs %gs after its timeout cancelled it (does it swallow "
            "CancelledError?); left running, ignored: its slot is free again (%d abandoned "
            "so far)",
            run.claim.id,
            run.task.name if run.task else "?",
            ABANDON_AFTER,
            self.stats.abandoned,
        )
