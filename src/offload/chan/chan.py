"""Go channels usable from threads and from any number of event loops at once.

The design follows Go's ``runtime/chan.go``: one lock per channel, a FIFO buffer, and two
queues of waiters ("sudogs"). A waiter is either a thread, woken by releasing a lock it is
blocked on, or an asyncio future, resolved directly when the waker runs on the waiter's loop
and through ``call_soon_threadsafe`` otherwise. The value moves under the channel lock, from
the waker's side, so a woken waiter never races to take it: it already has it.

A waiter leaves a queue only under the channel lock, either taken by a peer (``done`` set by
the peer) or removed by itself on timeout or cancellation (``done`` set by itself); whoever
sets ``done`` first owns the outcome. Select waiters sit in several channels' queues at once,
so their ``done`` flag is claimed under one more small lock (Go uses a CAS there).
"""

from __future__ import annotations

import threading
from asyncio import CancelledError
from asyncio.events import _get_running_loop
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, Generic, TypeVar

from offload.chan._timeout import acquire as _acquire
from offload.chan._timeout import timeout as _check_timeout
from offload.chan.errors import BlockingCallInLoop, ChanPanic, Closed, WouldBlock

__all__ = ["Chan", "nil"]

T = TypeVar("T")

_allocate_lock = threading.Lock
# Claims the ``done`` flag of select waiters, which several channel locks may race for.
# Always taken after (inside) a channel lock, never before one.
_CLAIM = threading.Lock()
_CLOSED: Any = object()  # _recv's marker for "closed and drained"


class _Sudog:
    """One blocked operation (``g is self``) or one case of a blocked select (``g`` shared)."""

    __slots__ = ("done", "elem", "fired", "fut", "g", "idx", "lock", "loop", "ok", "sel")

    def __init__(self, lock: Any, fut: Any, loop: Any, sel: bool) -> None:
        self.g = self
        self.idx = 0
        self.sel = sel
        self.done = False
        self.ok = False
        self.elem: Any = None
        self.fired = -1
        self.lock = lock
        self.fut = fut
        self.loop = loop


def _thread_waiter() -> _Sudog:
    lock = _allocate_lock()
    lock.acquire()
    return _Sudog(lock, None, None, False)


def _async_waiter() -> _Sudog:
    loop = _get_running_loop()
    return _Sudog(None, loop.create_future(), loop, False)


def _claim(g: _Sudog) -> bool:
    """Take ownership of a waiter found in a queue; False if another party already did."""
    if g.sel:
        with _CLAIM:
            if g.done:
                return False
            g.done = True
            return True
    g.done = True
    return True


def _resolve(fut: Any) -> None:
    if not fut.done():
        fut.set_result(None)


def _wake(g: _Sudog) -> None:
    fut = g.fut
    if fut is None:
        g.lock.release()
    elif _get_running_loop() is g.loop:
        if not fut.done():
            fut.set_result(None)
    else:
        try:
            g.loop.call_soon_threadsafe(_resolve, fut)
        except RuntimeError:  # the loop is closed: nobody is left to wake
            pass


def _blocking_in_loop(op: str) -> BlockingCallInLoop:
    return BlockingCallInLoop(
        f"Chan.{op}() would block the running event loop; await Chan.async_{op}() instead, "
        "or use the *_nowait form"
    )


def _wait_thread(g: _Sudog, lock: Any, q: list[_Sudog], timeout: float | None) -> bool:
    """Block the thread until woken; False (and no trace left) if the timeout came first.

    ``timeout`` was checked by :func:`_timeout.timeout` before ``g`` was queued: a wait
    that raised here would leave ``g`` queued, to swallow the next value sent.
    """
    if _acquire(g.lock, timeout):
        return True
    with lock:
        if not g.done:
            g.done = True
            if g in q:  # always, except for the nil channel's unqueued waiters
                q.remove(g)
            return False
    g.lock.acquire()  # a peer took us just in time: wait for its wake-up, the op happened
    return True


class Chan(Generic[T]):
    """A Go channel: ``Chan()`` is a rendezvous, ``Chan(n)`` a FIFO buffer of ``n`` values.

    Every operation exists as a blocking call for threads (``send``, ``recv``; optional
    ``timeout`` raising :class:`TimeoutError`), a ``*_nowait`` call raising
    :class:`WouldBlock`, and an awaitable ``async_*`` call; all may be mixed on one channel.
    A blocking call from a thread running an event loop raises :class:`BlockingCallInLoop`.
    """

    __slots__ = ("__weakref__", "_buf", "_cap", "_closed", "_lock", "_recvq", "_sendq")

    def __init__(self, cap: int = 0) -> None:
        if cap < 0:
            raise ChanPanic(f"makechan: size out of range ({cap}); capacity must be >= 0")
        self._cap = cap
        self._buf: list[Any] = []
        self._closed = False
        self._lock = _allocate_lock()
        self._recvq: list[_Sudog] = []
        self._sendq: list[_Sudog] = []

    @staticmethod
    def nil() -> Chan[Any]:
        """The nil channel: every operation blocks forever and select never picks it."""
        return nil

    @property
    def cap(self) -> int:
        """Buffer capacity given at creation (0 for a rendezvous channel)."""
        return self._cap

    def __len__(self) -> int:
        return len(self._buf)

    def __repr__(self) -> str:
        state = " closed" if self._closed else ""
        return f"<Chan len={len(self._buf)} cap={self._cap}{state}>"

    # -- core, under the channel lock ------------------------------------------------------

    def _send(self, v: Any, mk: Callable[[], _Sudog] | None) -> _Sudog | None:
        """Complete the send, or enqueue a new waiter from ``mk`` and return it."""
        lock = self._lock
        lock.acquire()
        if self._closed:
            lock.release()
            raise ChanPanic("send on closed channel")
        rq = self._recvq
        while rq:
            s = rq.pop(0)
            g = s.g
            if g.sel and not _claim(g):
                continue
            g.done = True
            g.elem = v
            g.ok = True
            g.fired = s.idx
            lock.release()
            _wake(g)
            return None
        buf = self._buf
        if len(buf) < self._cap:
            buf.append(v)
            lock.release()
            return None
        if mk is None:
            lock.release()
            raise WouldBlock("send would block: no receiver waiting and the buffer is full")
        g = mk()
        g.elem = v
        self._sendq.append(g)
        lock.release()
        return g

    def _recv(self, mk: Callable[[], _Sudog] | None) -> Any:
        """Return a value, ``_CLOSED``, or (when it must wait) a new enqueued ``_Sudog``."""
        lock = self._lock
        lock.acquire()
        buf = self._buf
        if buf:
            v = buf.pop(0)
            sq = self._sendq
            # A blocked sender means the buffer was full: move its value into the freed slot.
            while sq and len(buf) < self._cap:
                s = sq.pop(0)
                g = s.g
                if g.sel and not _claim(g):
                    continue
                g.done = True
                buf.append(s.elem)
                g.ok = True
                g.fired = s.idx
                lock.release()
                _wake(g)
                return v
            lock.release()
            return v
        sq = self._sendq
        while sq:
            s = sq.pop(0)
            g = s.g
            if g.sel and not _claim(g):
                continue
            g.done = True
            v = s.elem
            g.ok = True
            g.fired = s.idx
            lock.release()
            _wake(g)
            return v
        if self._closed:
            lock.release()
            return _CLOSED
        if mk is None:
            lock.release()
            raise WouldBlock("receive would block: no value buffered and no sender waiting")
        g = mk()
        self._recvq.append(g)
        lock.release()
        return g

    def _put_back(self, v: Any) -> None:
        """Return a value a cancelled receiver was handed: to a waiting receiver, or the
        head of the buffer (which may then briefly hold one more than ``cap``)."""
        lock = self._lock
        lock.acquire()
        rq = self._recvq
        while rq:
            s = rq.pop(0)
            g = s.g
            if g.sel and not _claim(g):
                continue
            g.done = True
            g.elem = v
            g.ok = True
            g.fired = s.idx
            lock.release()
            _wake(g)
            return
        self._buf.insert(0, v)
        lock.release()

    async def _wait_async(self, g: _Sudog, q: list[_Sudog], is_recv: bool) -> None:
        try:
            await g.fut
        except CancelledError:
            with self._lock:
                if not g.done:
                    g.done = True
                    q.remove(g)
                    raise
            # A peer committed to us before the cancellation landed. A sent value was
            # delivered; a received one goes back so that nothing is lost.
            if is_recv and g.ok:
                self._put_back(g.elem)
            raise

    # -- send --------------------------------------------------------------------------------

    def send(self, value: T, timeout: float | None = None) -> None:
        """Block until a receiver takes ``value`` (or it is buffered).

        Raises :class:`ChanPanic` if the channel is or becomes closed, and
        :class:`TimeoutError` (with nothing sent) when ``timeout`` seconds pass.
        """
        if _get_running_loop() is not None:
            raise _blocking_in_loop("send")
        if timeout is not None:
            timeout = _check_timeout(timeout, "Chan.send(timeout=...)")
        g = self._send(value, _thread_waiter)
        if g is not None:
            if not _wait_thread(g, self._lock, self._sendq, timeout):
                raise TimeoutError("send timed out; the value was not sent")
            if not g.ok:
                raise ChanPanic("send on closed channel")

    def send_nowait(self, value: T) -> None:
        """Send only if a receiver is waiting or the buffer has room, else WouldBlock."""
        self._send(value, None)

    async def async_send(self, value: T) -> None:
        """Await until a receiver takes ``value`` (or it is buffered).

        If the task is cancelled, CancelledError propagates; the value was then either not
        sent at all or already delivered to a receiver (like a write that completed).
        """
        g = self._send(value, _async_waiter)
        if g is not None:
            await self._wait_async(g, self._sendq, False)
            if not g.ok:
                raise ChanPanic("send on closed channel")

    # -- receive -----------------------------------------------------------------------------

    def recv(self, timeout: float | None = None) -> T:
        """Block for the next value; :class:`Closed` once the channel is closed and drained.

        With ``timeout`` seconds (None or ``math.inf``: forever; 0 or negative: only if a
        value is ready now), :class:`TimeoutError` when it passes with nothing received.
        A timeout that is not a number (NaN, a bool, a string) raises :class:`BadTimeout`.
        """
        if _get_running_loop() is not None:
            raise _blocking_in_loop("recv")
        if timeout is not None:
            timeout = _check_timeout(timeout, "Chan.recv(timeout=...)")
        r = self._recv(_thread_waiter)
        if r.__class__ is _Sudog:
            if not _wait_thread(r, self._lock, self._recvq, timeout):
                raise TimeoutError("recv timed out; nothing was received")
            if not r.ok:
                raise Closed("receive from closed channel")
            return r.elem
        if r is _CLOSED:
            raise Closed("receive from closed channel")
        return r

    def recv_ok(self, timeout: float | None = None) -> tuple[T | None, bool]:
        """Like :meth:`recv`, but ``(None, False)`` instead of raising on a closed channel."""
        if _get_running_loop() is not None:
            raise _blocking_in_loop("recv_ok")
        if timeout is not None:
            timeout = _check_timeout(timeout, "Chan.recv_ok(timeout=...)")
        r = self._recv(_thread_waiter)
        if r.__class__ is _Sudog:
            if not _wait_thread(r, self._lock, self._recvq, timeout):
                raise TimeoutError("recv timed out; nothing was received")
            return r.elem, r.ok
        if r is _CLOSED:
            return None, False
        return r, True

    def recv_nowait(self) -> T:
        """Take a value only if one is ready; WouldBlock if none, Closed if closed+drained."""
        r = self._recv(None)
        if r is _CLOSED:
            raise Closed("receive from closed channel")
        return r

    async def async_recv(self) -> T:
        """Await the next value; :class:`Closed` once closed and drained.

        Cancellation loses nothing: a value handed over just before the cancellation landed
        is put back at the head of the channel.
        """
        r = self._recv(_async_waiter)
        if r.__class__ is _Sudog:
            await self._wait_async(r, self._recvq, True)
            if not r.ok:
                raise Closed("receive from closed channel")
            return r.elem
        if r is _CLOSED:
            raise Closed("receive from closed channel")
        return r

    async def async_recv_ok(self) -> tuple[T | None, bool]:
        """Like :meth:`async_recv`, but ``(None, False)`` on a closed drained channel."""
        r = self._recv(_async_waiter)
        if r.__class__ is _Sudog:
            await self._wait_async(r, self._recvq, True)
            return r.elem, r.ok
        if r is _CLOSED:
            return None, False
        return r, True

    def __iter__(self) -> Iterator[T]:
        while True:
            v, ok = self.recv_ok()
            if not ok:
                return
            yield v  # type: ignore[misc]

    async def __aiter__(self) -> AsyncIterator[T]:
        while True:
            v, ok = await self.async_recv_ok()
            if not ok:
                return
            yield v  # type: ignore[misc]

    # -- close -------------------------------------------------------------------------------

    def close(self) -> None:
        """Close: receivers drain the buffer then see closed; blocked senders get ChanPanic."""
        lock = self._lock
        lock.acquire()
        if self._closed:
            lock.release()
            raise ChanPanic("close of closed channel")
        self._closed = True
        woken = []
        for q in (self._recvq, self._sendq):
            for s in q:
                g = s.g
                if g.sel and not _claim(g):
                    continue
                g.done = True
                g.elem = None
                g.ok = False
                g.fired = s.idx
                woken.append(g)
            q.clear()
        lock.release()
        for g in woken:
            _wake(g)

    # -- debugging ---------------------------------------------------------------------------

    def _debug_waiters(self) -> tuple[int, int]:
        """(receivers, senders) queued, stale select entries included; for tests."""
        with self._lock:
            return len(self._recvq), len(self._sendq)


class _NilChan(Chan[Any]):
    """Go's nil channel: blocks forever, is never ready in a select, cannot be closed."""

    __slots__ = ()

    def __init__(self) -> None:
        super().__init__(0)

    def __repr__(self) -> str:
        return "<Chan nil>"

    def _send(self, v: Any, mk: Callable[[], _Sudog] | None) -> _Sudog | None:
        if mk is None:
            raise WouldBlock("send on a nil channel blocks forever")
        return mk()  # a waiter no one can ever find: it waits until timeout/cancel

    def _recv(self, mk: Callable[[], _Sudog] | None) -> Any:
        if mk is None:
            raise WouldBlock("receive from a nil channel blocks forever")
        return mk()

    def _put_back(self, v: Any) -> None:  # pragma: no cover - nothing is ever handed over
        raise AssertionError("nil channel handed a value over")

    async def _wait_async(self, g: _Sudog, q: list[_Sudog], is_recv: bool) -> None:
        await g.fut

    def close(self) -> None:
        raise ChanPanic("close of nil channel")


nil: Chan[Any] = _NilChan()
"""The nil channel (``Chan.nil()``): blocks forever, never ready in a select."""
