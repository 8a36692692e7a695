"""A small pool of daemon threads for plain-function handlers.

Not ``ThreadPoolExecutor``: its threads are joined at interpreter exit, so one handler stuck
in a C call would keep a drained worker from exiting; and each submit there builds a Future
we do not need. Results come back to the event loop through ``call_soon_threadsafe``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from queue import SimpleQueue
from typing import Any

__all__ = ["ThreadPool"]

_STOP = object()


class ThreadPool:
    """Runs ``fn()`` on one of at most ``size`` daemon threads, created on demand."""

    def __init__(self, size: int, name: str = "offload-task") -> None:
        self._size = max(1, size)
        self._name = name
        self._jobs: SimpleQueue[Any] = SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._idle = 0
        self._abandoned: set[int] = set()  # threads that retire once their job ends
        self._lock = threading.Lock()

    def submit(self, fn: Callable[[], Any]) -> None:
        with self._lock:
            if self._idle == 0 and len(self._threads) < self._size:
                t = threading.Thread(
                    target=self._loop, name=f"{self._name}-{len(self._threads)}", daemon=True
                )
                self._threads.append(t)
                t.start()
            else:
                self._idle -= 1
        self._jobs.put(fn)

    def abandon(self, ident: int) -> None:
        """The job running on thread ``ident`` was given up on while it still runs (a
        handler past its timeout): allow one more thread now, and retire that one once
        its job ends."""
        with self._lock:
            if ident not in self._abandoned:
                self._abandoned.add(ident)
                self._size += 1

    def _loop(self) -> None:
        get = self._jobs.get
        while True:
            fn = get()
            if fn is _STOP:
                return
            try:
                fn()  # fn handles its own exceptions and reports back to the loop
            except BaseException:  # an async TaskTimeout that landed after the handler
                pass
            with self._lock:
                me = threading.get_ident()
                if me in self._abandoned:
                    self._abandoned.discard(me)
                    self._size -= 1
                    self._threads.remove(threading.current_thread())
                    return
                self._idle += 1

    def shutdown(self) -> None:
        """Ask idle threads to exit; busy ones finish their job first (they are daemons)."""
        for _ in self._threads:
            self._jobs.put(_STOP)
