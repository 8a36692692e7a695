"""Go's ``context``: cancellation and deadlines that flow down a tree, never up.

A context is cancelled at most once; ``err()`` then returns the same :class:`Canceled` or
:class:`DeadlineExceeded` instance forever, and ``done()`` is a closed channel, so waiting
for cancellation is an ordinary channel receive usable in any ``select``.

Deadlines are served by one shared timer thread with a heap (started on demand, gone after
a second with nothing to wait for), so a million contexts with timeouts cost no threads; a
context cancelled early drops its timer entry at once, so it holds nothing alive. Since
every deadline in the process depends on that thread, nothing a caller passes can stop it:
values are checked at the API (:mod:`offload.chan._timeout`), each wait is at most a day,
and a cancellation that raises is logged (logger ``offload.chan``) and skipped.
"""

from __future__ import annotations

import heapq
import math
import threading
import time
from collections.abc import Callable
from typing import Any

from offload.chan._timeout import MAX_WAIT
from offload.chan._timeout import seconds as _seconds
from offload.chan.chan import Chan, nil
from offload.chan.errors import Canceled, DeadlineExceeded

__all__ = [
    "CancelFunc",
    "Context",
    "background",
    "with_cancel",
    "with_deadline",
    "with_timeout",
    "with_value",
]

CancelFunc = Callable[[], None]
_monotonic = time.monotonic
_INF = math.inf
_NO_DEADLINE = "math.inf"  # what with_timeout/with_deadline take for "no deadline"


class Context:
    """A node of the context tree. :func:`background` is the root, never cancelled."""

    __slots__ = ()

    def done(self) -> Chan[Any]:
        """A channel closed when this context is cancelled (``nil`` if it never can be)."""
        return nil

    def err(self) -> Canceled | DeadlineExceeded | None:
        """None until cancelled; then why, as the same exception instance every time."""
        return None

    def deadline(self) -> float | None:
        """When the context will be cancelled on its own, in ``time.monotonic()`` seconds."""
        return None

    def remaining(self) -> float | None:
        """Seconds left before the deadline (0.0 once passed), or None without a deadline."""
        d = self.deadline()
        return None if d is None else max(0.0, d - _monotonic())

    def value(self, key: Any) -> Any:
        """The value bound to ``key`` by the nearest :func:`with_value` ancestor, or None."""
        return None

    def check(self) -> None:
        """Raise ``err()`` if the context is cancelled; a cheap checkpoint for loops."""
        e = self.err()
        if e is not None:
            raise e

    def __repr__(self) -> str:
        return "context.Background"

    def _canceller(self) -> _CancelCtx | None:
        return None


class _ValueCtx(Context):
    __slots__ = ("_key", "_parent", "_val")

    def __init__(self, parent: Context, key: Any, val: Any) -> None:
        self._parent = parent
        self._key = key
        self._val = val

    def done(self) -> Chan[Any]:
        return self._parent.done()

    def err(self) -> Canceled | DeadlineExceeded | None:
        return self._parent.err()

    def deadline(self) -> float | None:
        return self._parent.deadline()

    def value(self, key: Any) -> Any:
        ctx: Context = self
        while isinstance(ctx, _ValueCtx):
            if ctx._key == key:
                return ctx._val
            ctx = ctx._parent
        return ctx.value(key)

    def __repr__(self) -> str:
        return f"{self._parent!r}.WithValue({self._key!r}, {self._val!r})"

    def _canceller(self) -> _CancelCtx | None:
        return self._parent._canceller()


class _CancelCtx(Context):
    __slots__ = ("_children", "_deadline", "_done", "_err", "_lock", "_parent", "_timer")

    def __init__(self, parent: Context, deadline: float | None) -> None:
        self._parent = parent
        self._deadline = deadline
        self._lock = threading.Lock()
        self._done: Chan[Any] = Chan()
        self._err: Canceled | DeadlineExceeded | None = None
        self._children: set[_CancelCtx] | None = set()
        self._timer: list[Any] | None = None

    def done(self) -> Chan[Any]:
        return self._done

    def err(self) -> Canceled | DeadlineExceeded | None:
        return self._err

    def deadline(self) -> float | None:
        return self._deadline

    def value(self, key: Any) -> Any:
        return self._parent.value(key)

    def __repr__(self) -> str:
        kind = "WithCancel" if self._deadline is None else f"WithDeadline({self._deadline:.3f})"
        return f"{self._parent!r}.{kind}"

    def _canceller(self) -> _CancelCtx | None:
        return self

    def _cancel(self, err: Canceled | DeadlineExceeded, detach: bool) -> None:
        with self._lock:
            if self._err is not None:
                return
            self._err = err
            children, self._children = self._children, None
            timer, self._timer = self._timer, None
            self._done.close()
        if timer is not None:
            _TIMERS.discard(timer)
        for child in children or ():
            child._cancel(err, False)
        if detach:
            p = self._parent._canceller()
            if p is not None:
                with p._lock:
                    if p._children is not None:
                        p._children.discard(self)

    def _attach(self) -> None:
        """Join the parent's cancellation: inherit it now, or be cancelled with it later."""
        p = self._parent._canceller()
        if p is None:
            return
        with p._lock:
            if p._err is None:
                assert p._children is not None
                p._children.add(self)
                return
            err = p._err
        self._cancel(err, False)


def background() -> Context:
    """The root context: never cancelled, no deadline, no values."""
    return _BACKGROUND


def with_cancel(parent: Context) -> tuple[Context, CancelFunc]:
    """A child cancelled by calling ``cancel()`` (idempotent) or when ``parent`` is.

    Always call ``cancel`` when done with the child: until then the parent holds it.
    """
    ctx = _CancelCtx(parent, parent.deadline())
    ctx._attach()
    return ctx, lambda: ctx._cancel(Canceled(), True)


def with_deadline(parent: Context, deadline: float) -> tuple[Context, CancelFunc]:
    """A child also cancelled with :class:`DeadlineExceeded` at ``deadline`` (monotonic).

    A parent's earlier deadline wins; a deadline already passed (``-math.inf`` too) cancels
    the child at once; ``math.inf`` adds no deadline (the child is :func:`with_cancel`'s).
    NaN, a bool or a string raises :class:`BadTimeout`.
    """
    d = _seconds(deadline, "with_deadline(deadline=...)", _NO_DEADLINE)
    if d == _INF:
        return with_cancel(parent)
    return _with_deadline(parent, d)


def with_timeout(parent: Context, seconds: float) -> tuple[Context, CancelFunc]:
    """:func:`with_deadline` at ``seconds`` from now.

    Zero or negative: the child is born with :class:`DeadlineExceeded` (Go's semantics).
    ``math.inf``: no deadline of its own. Any finite value, however large, is a real
    deadline (the timer thread sleeps towards it a day at a time). NaN, a bool or a string
    raises :class:`BadTimeout`.
    """
    s = _seconds(seconds, "with_timeout(seconds=...)", _NO_DEADLINE)
    d = _monotonic() + s
    if d == _INF:
        return with_cancel(parent)
    return _with_deadline(parent, d)


def _with_deadline(parent: Context, deadline: float) -> tuple[Context, CancelFunc]:
    pd = parent.deadline()
    if pd is not None and pd <= deadline:
        return with_cancel(parent)
    ctx = _CancelCtx(parent, deadline)
    ctx._attach()
    cancel: CancelFunc = lambda: ctx._cancel(Canceled(), True)  # noqa: E731
    if deadline <= _monotonic():
        ctx._cancel(DeadlineExceeded(), True)
        return ctx, cancel
    with ctx._lock:
        if ctx._err is None:
            ctx._timer = _TIMERS.add(deadline, ctx)
    return ctx, cancel


def with_value(parent: Context, key: Any, value: Any) -> Context:
    """A child carrying ``key -> value`` (request-scoped data, not optional parameters)."""
    return _ValueCtx(parent, key, value)


class _Timers:
    """One daemon thread sleeping until the earliest deadline of a heap of contexts."""

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._heap: list[list[Any]] = []  # [deadline, seq, ctx or None when discarded]
        self._seq = 0
        self._dead = 0
        self._thread: threading.Thread | None = None

    def add(self, deadline: float, ctx: _CancelCtx) -> list[Any]:
        """Cancel ``ctx`` at ``deadline``: a float, never NaN (:func:`_seconds` saw to it)."""
        with self._cond:
            self._seq += 1
            entry = [deadline, self._seq, ctx]
            heapq.heappush(self._heap, entry)
            if self._thread is None:
                self._start()
            elif self._heap[0] is entry:
                self._cond.notify()
            return entry

    def _start(self) -> None:
        # Under self._cond. Recorded only once started: a failed start (no threads left)
        # raises to the caller and the next add() tries again.
        t = threading.Thread(target=self._run, name="offload.chan-timers", daemon=True)
        t.start()
        self._thread = t

    def discard(self, entry: list[Any]) -> None:
        with self._cond:
            if entry[2] is None:
                return
            entry[2] = None
            self._dead += 1
            if self._dead > 64 and self._dead * 2 > len(self._heap):
                self._heap = [e for e in self._heap if e[2] is not None]
                heapq.heapify(self._heap)
                self._dead = 0

    def _run(self) -> None:
        """The thread's body. It serves every deadline in the process, so nothing may end
        it but an empty heap: each cancellation is guarded, each wait is at most a day."""
        try:
            self._loop()
        except BaseException:  # unreachable by design; never leave deadlines unserved
            _report("offload.chan: the timer thread failed (%s); starting a new one", self)
            with self._cond:
                self._thread = None
                if any(e[2] is not None for e in self._heap):
                    self._start()

    def _loop(self) -> None:
        cond = self._cond
        with cond:
            while True:
                heap = self._heap
                now = _monotonic()
                due = []
                while heap and (heap[0][2] is None or heap[0][0] <= now):
                    e = heapq.heappop(heap)
                    if e[2] is None:
                        self._dead -= 1
                    else:
                        due.append(e[2])
                        e[2] = None
                if due:
                    cond.release()
                    try:
                        for ctx in due:
                            try:
                                ctx._cancel(DeadlineExceeded(), True)
                            except BaseException:  # even SystemExit: the others are due
                                _report("offload.chan: cancelling %s at its deadline failed", ctx)
                    finally:
                        cond.acquire()
                    continue
                if heap:
                    # A deadline years away is still a real one: sleep towards it a day at a
                    # time (a single wait that long overflows the platform's time_t).
                    cond.wait(min(heap[0][0] - now, MAX_WAIT))
                    continue
                cond.wait(1.0)
                if not self._heap:
                    self._thread = None
                    return

    def _pending(self) -> int:
        """Live timer entries; for tests that check cancelled contexts release theirs."""
        with self._cond:
            return sum(1 for e in self._heap if e[2] is not None)


def _report(message: str, about: Any) -> None:
    """Log the exception being handled; the timer thread goes on regardless, even if
    logging itself fails (a broken handler, a ``__repr__`` that raises)."""
    try:
        import logging  # only when something went wrong: importing offload.chan stays light

        logging.getLogger("offload.chan").exception(message, about)
    except BaseException:  # pragma: no cover - nowhere left to report to
        pass


_BACKGROUND = Context()
_TIMERS = _Timers()
