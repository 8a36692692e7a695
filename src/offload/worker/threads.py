"""A small pool of daemon threads for plain-function handlers.

Not ``ThreadPoolExecutor``: its threads are joined at interpreter exit, so one handler stuck
in a C call would keep a drained worker from exiting; and each submit there builds a Future
we do not need. Results come back to the event loop through ``call_soon_threadsafe``.

Few threads run at once when tasks are short. A job is handed to a sleeping thread at once
only while fewer than ``eager`` threads are busy; otherwise it waits in the queue for the
next thread that finishes, which takes it without sleeping. Every thread that wakes costs a
context switch and a turn at the GIL, and on a busy machine each of those is a wait for a
core: 32 threads woken for 32 short tasks run them slower than 4 threads taking 8 each. A
job still queued after ``kick_after`` seconds (the loop calls :meth:`kick`) wakes a thread
of its own, so a handler that blocks for long never holds back the tasks behind it.

A thread that runs out of jobs calls ``refill`` (when set) before it sleeps: the worker's
lanes (:mod:`offload.worker.lanes`) claim the next tasks right there, on this thread.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

__all__ = ["ThreadPool"]

EAGER = 2  # busy threads below which a new job wakes a sleeping thread at once
KICK_AFTER = 0.005  # seconds without a finished job after which waiting jobs get threads
KICK_LATE = 0.025  # seconds a job may wait while the busy threads finish others


class ThreadPool:
    """Runs ``fn()`` on one of at most ``size`` daemon threads, created on demand."""

    def __init__(self, size: int, name: str = "offload-task", eager: int = EAGER) -> None:
        self._size = max(1, size)
        self._name = name
        self._eager = max(1, eager)
        self._jobs: deque[tuple[float, Callable[[], Any]]] = deque()
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._threads: list[threading.Thread] = []
        self._sleeping = 0  # threads waiting for a job
        self._woken = 0  # of those, notified and not yet running
        self._busy = 0  # threads running a job
        self._abandoned: set[int] = set()  # threads that retire once their job ends
        self._stopped = False
        self.last_done = 0.0  # time.monotonic() when a thread last finished a job
        self._job_started: dict[int, float] = {}  # thread -> when its running job started
        #: called (without the lock) by a thread that ran out of jobs, before it sleeps,
        #: with ``False``; and with ``True`` by a thread that finished a job and left
        #: ``refill_below`` or fewer queued (it claims the next batch while the other busy
        #: threads run those). It may queue more with :meth:`submit_many`. Never raises.
        self.refill: Callable[[bool], object] | None = None
        self.refill_below = 0

    def submit(self, fn: Callable[[], Any]) -> bool:
        """Queue ``fn``; False when it waits for a busy thread (call :meth:`kick` after
        ``KICK_AFTER`` seconds to bound that wait)."""
        with self._lock:
            self._jobs.append((time.monotonic(), fn))
            if self._busy + self._woken < self._eager:
                return self._start_one()
            return False

    def submit_many(self, fns: list[Callable[[], Any]]) -> None:
        """Queue ``fns`` from one of the pool's own threads (which takes the first of them
        itself), waking others only up to ``eager`` busy threads."""
        now = time.monotonic()
        with self._lock:
            self._jobs.extend((now, fn) for fn in fns)
            while len(self._jobs) > 1 and self._busy + self._woken < self._eager:
                if not self._start_one():
                    break

    def kick(self) -> bool:
        """Wake (or start) threads for jobs that wait too long: one for every job queued
        ``KICK_AFTER`` seconds or more when no busy thread finished a job meanwhile (they
        are all stuck in long handlers), else one more thread per call while the oldest
        job waited ``KICK_LATE`` seconds (the busy ones keep up too slowly). True while
        jobs or busy threads remain (call again later)."""
        with self._lock:
            jobs = self._jobs
            if jobs:
                now = time.monotonic()
                if now - self.last_done >= KICK_AFTER:
                    late = now - KICK_AFTER
                    n = 0
                    while n < len(jobs) and jobs[n][0] <= late:
                        n += 1
                    for _ in range(n - self._woken):
                        if not self._start_one():
                            break
                elif jobs[0][0] <= now - KICK_LATE and not self._woken:
                    self._start_one()
            return bool(jobs) or self._busy > 0

    def pending(self) -> int:
        """Jobs queued and not yet taken by a thread."""
        return len(self._jobs)

    def _start_one(self) -> bool:
        # holding the lock
        if self._sleeping > self._woken:
            self._woken += 1
            self._wake.notify()
            return True
        if len(self._threads) < self._size:
            t = threading.Thread(
                target=self._loop, name=f"{self._name}-{len(self._threads)}", daemon=True
            )
            self._threads.append(t)
            self._busy += 1  # it takes a job as soon as it runs
            t.start()
            return True
        return False

    def abandon(self, ident: int) -> None:
        """The job running on thread ``ident`` was given up on while it still runs (a
        handler past its timeout): allow one more thread now, and retire that one once
        its job ends."""
        with self._lock:
            if ident not in self._abandoned:
                self._abandoned.add(ident)
                self._size += 1

    def _loop(self) -> None:
        jobs, lock, wake = self._jobs, self._lock, self._wake
        me = threading.get_ident()
        running = self._job_started
        lock.acquire()
        try:
            surplus = False
            while True:
                # busy here: a new thread, or one that just ran a job
                refilled = False
                while not jobs or surplus:
                    if self._stopped:
                        self._busy -= 1
                        return
                    if not refilled and not surplus and self.refill is not None:
                        refilled = True
                        lock.release()
                        try:
                            self.refill(False)
                        finally:
                            lock.acquire()
                        continue
                    surplus = False
                    self._busy -= 1
                    self._sleeping += 1
                    wake.wait()
                    self._sleeping -= 1
                    if self._woken:
                        self._woken -= 1
                    self._busy += 1
                    refilled = False
                fn = jobs.popleft()[1]
                running[me] = time.monotonic()
                lock.release()
                try:
                    fn()  # fn handles its own exceptions and reports back to the loop
                except BaseException:  # an async TaskTimeout that landed after the handler
                    pass
                finally:
                    lock.acquire()
                self.last_done = now = time.monotonic()
                del running[me]
                if 0 < len(jobs) <= self.refill_below and self.refill is not None:
                    lock.release()
                    try:
                        self.refill(True)
                    finally:
                        lock.acquire()
                if jobs and self._busy > self._eager:
                    # more threads take jobs than wanted (woken while all were stuck):
                    # this one sleeps unless fewer than `eager` others make progress
                    fresh = sum(now - t < KICK_AFTER for t in running.values())
                    surplus = fresh >= self._eager
                if me in self._abandoned:
                    self._abandoned.discard(me)
                    self._size -= 1
                    self._busy -= 1
                    self._threads.remove(threading.current_thread())
                    return
        finally:
            lock.release()

    def shutdown(self) -> None:
        """Ask idle threads to exit; busy ones finish their job first (they are daemons)."""
        with self._lock:
            self._stopped = True
            self._wake.notify_all()
