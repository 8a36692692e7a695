"""Go's ``select`` over channel cases, for threads and for asyncio.

As in Go's ``runtime/select.go``: lock every channel involved in a fixed order (by ``id``),
poll the cases in a random permutation and commit the first ready one (so the choice is
uniform among ready cases); otherwise enqueue one shared waiter on every channel, each entry
carrying its case index, and sleep. The peer that wakes the select claims its ``done`` flag
first, so exactly one case commits; on wake-up, timeout or cancellation the select locks the
channels again and removes its remaining entries. A select never matches itself, because
matching is done only by the operation that finds a waiter, never by a waiter.
"""

from __future__ import annotations

import random
from asyncio import CancelledError
from asyncio.events import _get_running_loop
from typing import Any

from offload.chan._timeout import acquire as _acquire
from offload.chan._timeout import timeout as _check_timeout
from offload.chan.chan import (
    Chan,
    _async_waiter,
    _blocking_in_loop,
    _claim,
    _NilChan,
    _resolve,
    _Sudog,
    _thread_waiter,
    _wake,
)
from offload.chan.errors import ChanPanic

__all__ = ["DEFAULT", "Case", "async_select", "recv", "select", "send"]

DEFAULT = -1
"""The index :func:`select` returns when it took the default branch."""

_random = random.random
_shuffle = random.shuffle


class Case:
    """One arm of a select: built by :func:`recv` or :func:`send`, evaluated once."""

    __slots__ = ("ch", "is_send", "value")

    def __init__(self, ch: Chan[Any], is_send: bool, value: Any) -> None:
        if not isinstance(ch, Chan):
            raise TypeError(f"select case needs a Chan, got {type(ch).__name__}")
        self.ch = ch
        self.is_send = is_send
        self.value = value

    def __repr__(self) -> str:
        return f"send({self.ch!r}, {self.value!r})" if self.is_send else f"recv({self.ch!r})"


def recv(ch: Chan[Any]) -> Case:
    """A receive case: ready when a value is buffered, a sender waits, or ``ch`` is closed."""
    return Case(ch, False, None)


def send(ch: Chan[Any], value: Any) -> Case:
    """A send case: ready when a receiver waits or the buffer has room (closed: ChanPanic)."""
    return Case(ch, True, value)


def _plan(cases: tuple[Case, ...]) -> tuple[list[int], list[Any]]:
    """Random poll order over non-nil cases, and their channels' locks in a global order."""
    order = []
    chans: dict[int, Chan[Any]] = {}
    for i, c in enumerate(cases):
        if c.__class__ is not Case:
            raise TypeError(f"select takes recv(ch)/send(ch, v) cases, got {c!r}")
        ch = c.ch
        if ch.__class__ is _NilChan:
            continue
        order.append(i)
        chans[id(ch)] = ch
    n = len(order)
    if n == 2:
        if _random() < 0.5:
            order.reverse()
    elif n > 2:
        _shuffle(order)
    if len(chans) == 1:
        return order, [ch._lock for ch in chans.values()]
    return order, [chans[k]._lock for k in sorted(chans)]


def _unlock(locks: list[Any]) -> None:
    for lock in reversed(locks):
        lock.release()


def _poll(cases: tuple[Case, ...], order: list[int]) -> tuple[int, Any, bool, Any] | None:
    """Commit the first ready case in ``order``; all locks are held by the caller."""
    for i in order:
        c = cases[i]
        ch = c.ch
        if c.is_send:
            if ch._closed:
                raise ChanPanic("send on closed channel")
            rq = ch._recvq
            while rq:
                s = rq.pop(0)
                g = s.g
                if g.sel and not _claim(g):
                    continue
                g.done = True
                g.elem = c.value
                g.ok = True
                g.fired = s.idx
                return i, None, True, g
            buf = ch._buf
            if len(buf) < ch._cap:
                buf.append(c.value)
                return i, None, True, None
        else:
            buf = ch._buf
            sq = ch._sendq
            if buf:
                v = buf.pop(0)
                while sq and len(buf) < ch._cap:
                    s = sq.pop(0)
                    g = s.g
                    if g.sel and not _claim(g):
                        continue
                    g.done = True
                    buf.append(s.elem)
                    g.ok = True
                    g.fired = s.idx
                    return i, v, True, g
                return i, v, True, None
            while sq:
                s = sq.pop(0)
                g = s.g
                if g.sel and not _claim(g):
                    continue
                g.done = True
                g.ok = True
                g.fired = s.idx
                return i, s.elem, True, g
            if ch._closed:
                return i, None, False, None
    return None


def _enqueue(cases: tuple[Case, ...], order: list[int], g: _Sudog) -> list[_Sudog]:
    g.sel = True
    entries = []
    for i in order:
        c = cases[i]
        s = _Sudog(None, None, None, True)
        s.g = g
        s.idx = i
        if c.is_send:
            s.elem = c.value
            c.ch._sendq.append(s)
        else:
            c.ch._recvq.append(s)
        entries.append(s)
    return entries


def _dequeue(cases: tuple[Case, ...], entries: list[_Sudog]) -> None:
    for s in entries:
        c = cases[s.idx]
        q = c.ch._sendq if c.is_send else c.ch._recvq
        try:
            q.remove(s)
        except ValueError:  # taken by the peer that fired it, or skipped as stale
            pass


def _outcome(cases: tuple[Case, ...], g: _Sudog) -> tuple[int, Any, bool]:
    i = g.fired
    if cases[i].is_send:
        if not g.ok:
            raise ChanPanic("send on closed channel")
        return i, None, True
    return i, g.elem, g.ok


def _start(
    cases: tuple[Case, ...], default: bool, mk: Any
) -> tuple[tuple[int, Any, bool] | None, list[int], list[Any], _Sudog | None, list[_Sudog]]:
    order, locks = _plan(cases)
    for lock in locks:
        lock.acquire()
    try:
        r = _poll(cases, order)
    except BaseException:
        _unlock(locks)
        raise
    if r is not None:
        _unlock(locks)
        if r[3] is not None:
            _wake(r[3])
        return (r[0], r[1], r[2]), order, locks, None, []
    if default:
        _unlock(locks)
        return (DEFAULT, None, False), order, locks, None, []
    g = mk()
    entries = _enqueue(cases, order, g)
    _unlock(locks)
    return None, order, locks, g, entries


def select(
    *cases: Case, default: bool = False, timeout: float | None = None
) -> tuple[int, Any, bool]:
    """Block until one case can proceed, commit exactly that one, return ``(index, value, ok)``.

    ``value``/``ok`` are the received value and False for a closed channel (recv cases) or
    ``None``/True (send cases). With ``default=True`` it never blocks and returns
    ``(DEFAULT, None, False)`` when nothing is ready. A ``timeout`` raises TimeoutError with
    no case committed (None or ``math.inf``: none; 0 or negative: poll once; NaN, a bool or
    a string: :class:`BadTimeout`). A send case on a closed channel raises
    :class:`ChanPanic`.
    """
    if _get_running_loop() is not None:
        raise _blocking_in_loop("select")
    if timeout is not None:  # checked before any waiter is queued: a bad one leaves none
        timeout = _check_timeout(timeout, "select(timeout=...)")
    r, _order, locks, g, entries = _start(cases, default, _thread_waiter)
    if g is None:
        return r  # type: ignore[return-value]
    woken = _acquire(g.lock, timeout)
    for lock in locks:
        lock.acquire()
    if not woken and _claim(g):
        _dequeue(cases, entries)
        _unlock(locks)
        raise TimeoutError("select timed out; no case was committed")
    _dequeue(cases, entries)
    _unlock(locks)
    if not woken:
        g.lock.acquire()  # fired just before the timeout: wait for the peer's wake-up
    return _outcome(cases, g)


async def async_select(
    *cases: Case, default: bool = False, timeout: float | None = None
) -> tuple[int, Any, bool]:
    """Awaitable :func:`select`. A cancelled select commits nothing, or puts a value it was
    handed back at the head of its channel; CancelledError always propagates."""
    if timeout is not None:  # a NaN would sit in the loop's timer heap and corrupt it
        timeout = _check_timeout(timeout, "async_select(timeout=...)")
    r, _order, locks, g, entries = _start(cases, default, _async_waiter)
    if g is None:
        return r  # type: ignore[return-value]
    handle = None
    if timeout is not None:
        # asyncio itself sleeps at most a day at a time, so any finite delay is safe here
        handle = g.loop.call_later(timeout, _resolve, g.fut)
    try:
        await g.fut
    except CancelledError:
        for lock in locks:
            lock.acquire()
        mine = _claim(g)
        _dequeue(cases, entries)
        _unlock(locks)
        if not mine:
            c = cases[g.fired]
            if not c.is_send and g.ok:
                c.ch._put_back(g.elem)
        raise
    finally:
        if handle is not None:
            handle.cancel()
    for lock in locks:
        lock.acquire()
    timed_out = _claim(g)  # nobody fired: only the timer can have woken us
    _dequeue(cases, entries)
    _unlock(locks)
    if timed_out:
        raise TimeoutError("select timed out; no case was committed")
    return _outcome(cases, g)
