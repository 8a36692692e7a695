"""Saying which task holds the event loop, while it holds it.

An ``async def`` handler that makes a blocking call (``time.sleep``, a synchronous HTTP or
database client, a long computation) holds the worker's event loop: every other async task
on it stops, nothing is claimed or acked, and no heartbeat goes out, so past its lease the
task may run again on another worker. asyncio says so only in debug mode, and only after
the fact. A :class:`LoopWatch` thread sees the loop go ``STALL_AFTER`` seconds without a
turn and logs, while it is still held, which task holds it and where (the innermost frame of
the application's code, and the innermost of all), then how long it was held once it turns
again. ``WorkerStats.stalls`` counts them.

Cost: one timer on the loop and one wake-up of the watch thread every ``STALL_AFTER / 4``
seconds; nothing per task.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import sysconfig
import threading
import time
import traceback
from collections.abc import Mapping
from typing import TYPE_CHECKING

from ..task import _current

if TYPE_CHECKING:
    from .state import Running, WorkerStats

__all__ = ["STALL_AFTER", "LoopWatch"]

log = logging.getLogger("offload.worker")

STALL_AFTER = 1.0  # seconds without a turn of the loop before the worker says who holds it

_OFFLOAD = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep


def _library() -> tuple[str, ...]:
    """Where the standard library, installed packages and offload live: a frame elsewhere
    is the application's."""
    paths = sysconfig.get_paths()
    found = {paths.get(k) for k in ("stdlib", "platstdlib", "purelib", "platlib")}
    return (*(os.path.abspath(p) + os.sep for p in found if p), _OFFLOAD)


class LoopWatch:
    """Watches ``loop`` from a thread of its own (start it on the loop's thread); the
    worker's ``running`` runs name the task that holds it, and each stall counts in
    ``stats.stalls``."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        running: Mapping[str, Running],
        stats: WorkerStats,
        after: float = STALL_AFTER,
    ) -> None:
        self._loop = loop
        self._running = running
        self._stats = stats
        self._after = after
        self._every = after / 4
        self._beat = time.monotonic()
        self._timer: asyncio.TimerHandle | None = None
        self._stop = threading.Event()
        self._loop_thread = threading.get_ident()  # started on the loop's thread
        self._thread = threading.Thread(target=self._watch, name="offload-loop-watch", daemon=True)

    def start(self) -> None:
        self._tick()
        self._thread.start()

    def stop(self) -> None:
        """On the loop's thread: the loop runs, so a stall being watched has ended."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._beat = time.monotonic()
        self._stop.set()
        self._thread.join(timeout=1.0)

    def _tick(self) -> None:
        self._beat = time.monotonic()
        self._timer = self._loop.call_later(self._every, self._tick)

    def _watch(self) -> None:
        held: tuple[float, str] | None = None  # since when, and by what
        while True:
            stopping = self._stop.wait(self._every)
            held = self._check(held, stopping)
            if stopping:
                return

    def _check(self, held: tuple[float, str] | None, stopping: bool) -> tuple[float, str] | None:
        beat = self._beat
        if held is not None:
            since, what = held
            if beat > since:  # the loop turned again
                log.warning("the event loop ran again after %.1fs held by %s", beat - since, what)
                return None
            return held
        late = time.monotonic() - beat
        if stopping or late < self._after + self._every:  # the timer may be a turn late
            return None
        self._stats.stalls += 1
        try:
            what, where = self._describe()
        except Exception as exc:  # never let the watch die on a report
            what, where = "an unknown task", f"(could not tell where: {exc!r})"
        log.warning(
            "the event loop has not run for %.1fs: %s holds it, %s. Nothing else on this "
            "worker runs meanwhile, and no heartbeat goes out (past its lease the task "
            "may run again elsewhere). A blocking call in an async def handler does "
            "this: make the handler a plain def (it then runs on a thread), or await "
            "asyncio.to_thread(...) around the blocking call",
            late,
            what,
            where,
        )
        return beat, what

    def _describe(self) -> tuple[str, str]:
        task = asyncio.current_task(self._loop)
        what = _label(task, self._running)
        frame = sys._current_frames().get(self._loop_thread)
        if frame is None:
            return what, "where is unknown"
        stack = traceback.extract_stack(frame)
        inner = stack[-1]
        library = _library()
        mine = [f for f in stack if not os.path.abspath(f.filename).startswith(library)]
        parts = []
        if mine:
            parts.append("at " + _frame(mine[-1]))
        if not mine or mine[-1] is not inner:
            parts.append(("in " if mine else "at ") + _frame(inner))
        return what, ", ".join(parts)


def _label(task: asyncio.Task | None, running: Mapping[str, Running]) -> str:
    """Which of this worker's tasks an asyncio Task runs, read from another thread."""
    if task is None:
        return "the worker's own code or a hook (no task)"
    info = None
    get_context = getattr(task, "get_context", None)  # Python 3.12+: the run's own context
    if get_context is not None:
        info = get_context().get(_current)
    if info is None:  # 3.11, or a Task of the handler's own: the run whose Task it is
        for run in list(running.values()):
            if run.future is task:
                info = run.info
                break
    if info is None:
        return f"asyncio task {task.get_name()!r} (not one the worker started)"
    return f"task {info.id} ({info.task}, queue {info.queue})"


def _frame(f: traceback.FrameSummary) -> str:
    line = f" ({f.line.strip()})" if f.line else ""
    return f"{f.filename}:{f.lineno} in {f.name}{line}"
