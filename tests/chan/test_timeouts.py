"""Timeouts and deadlines of every size and kind, and the timer thread that serves them.

The timer thread is one per process: a value that killed it once would leave every later
deadline in the process unserved, so these tests end by checking a short deadline fires.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from collections.abc import Callable
from decimal import Decimal
from fractions import Fraction
from typing import Any

import pytest

import offload.chan._timeout as timeout_mod
from offload.chan import (
    BadTimeout,
    Chan,
    DeadlineExceeded,
    ErrGroup,
    WaitGroup,
    async_select,
    background,
    go,
    nil,
    recv,
    select,
    send,
    with_deadline,
    with_timeout,
)
from offload.chan.context import _TIMERS, _CancelCtx, _Timers
from offload.errors import ConfigError, OffloadError

from .conftest import queued

pytestmark = pytest.mark.timeout(30)

HUGE = [1e10, 1e300, 10**400, math.inf]
BAD = [math.nan, -math.nan, True, False, "1", b"1", 1j, Decimal("1"), [1]]


def later(delay: float, fn: Callable[..., Any], *args: Any) -> None:
    def run() -> None:
        time.sleep(delay)
        fn(*args)

    threading.Thread(target=run, daemon=True).start()


def assert_a_short_deadline_fires() -> None:
    """The shared timer thread still serves deadlines: a 50 ms one fires on time."""
    ctx, cancel = with_timeout(background(), 0.05)
    try:
        t0 = time.monotonic()
        _, ok = ctx.done().recv_ok(timeout=5)
        assert not ok, "a 50 ms deadline did not fire within 5 s: the timer thread is dead"
        assert 0.04 <= time.monotonic() - t0 < 2
        assert isinstance(ctx.err(), DeadlineExceeded)
    finally:
        cancel()


# -- the reported defect: one huge timeout killed every later deadline -----------------------


def test_a_huge_timeout_does_not_kill_the_timer_thread() -> None:
    far, cancel_far = with_timeout(background(), 1e10)
    try:
        assert far.err() is None
        assert far.remaining() > 1e9  # type: ignore[operator]
        for bad in (math.nan, "soon", True):
            with pytest.raises(BadTimeout):
                with_timeout(background(), bad)
            with pytest.raises(BadTimeout):
                with_deadline(background(), bad)
        _, cancel_forever = with_timeout(background(), math.inf)
        cancel_forever()
        time.sleep(0.05)  # the timer thread has woken for the 1e10 entry and gone back to sleep
        assert_a_short_deadline_fires()
        assert far.err() is None
    finally:
        cancel_far()


def test_a_cancellation_that_raises_is_logged_and_later_deadlines_still_fire(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class Exploding(_CancelCtx):
        __slots__ = ()

        def _cancel(self, err: Any, detach: bool) -> None:
            raise RuntimeError("boom in a cancellation")

    class Exiting(_CancelCtx):
        __slots__ = ()

        def _cancel(self, err: Any, detach: bool) -> None:
            raise SystemExit(3)

    caplog.set_level(logging.ERROR, logger="offload.chan")
    # due in the same instant: the one after a raising cancellation must still be cancelled
    at = time.monotonic() + 0.02
    _TIMERS.add(at, Exploding(background(), at))
    _TIMERS.add(at, Exiting(background(), at))
    victim, cancel_victim = with_deadline(background(), at)
    try:
        _, ok = victim.done().recv_ok(timeout=5)
        assert not ok and isinstance(victim.err(), DeadlineExceeded)
        assert_a_short_deadline_fires()
    finally:
        cancel_victim()
    failures = [r for r in caplog.records if r.name == "offload.chan"]
    assert len(failures) == 2, caplog.text
    assert "boom in a cancellation" in caplog.text
    assert all("at its deadline failed" in r.getMessage() for r in failures)


def test_a_timer_thread_that_fails_is_replaced(caplog: pytest.LogCaptureFixture) -> None:
    """The last line of defence: should the loop itself ever raise, a new thread takes over."""
    caplog.set_level(logging.ERROR, logger="offload.chan")
    timers = _Timers()
    real_loop = timers._loop
    failed: list[int] = []

    def loop_that_fails_once() -> None:
        if not failed:
            failed.append(1)
            raise RuntimeError("the loop broke")
        real_loop()

    timers._loop = loop_that_fails_once  # type: ignore[method-assign]
    ctx = _CancelCtx(background(), time.monotonic() + 0.05)
    timers.add(ctx.deadline(), ctx)  # type: ignore[arg-type]
    _, ok = ctx.done().recv_ok(timeout=5)
    assert not ok and isinstance(ctx.err(), DeadlineExceeded)
    assert failed == [1]
    assert "the timer thread failed" in caplog.text and "the loop broke" in caplog.text


def test_the_timer_thread_waits_a_day_at_most(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every wait is sliced: with slices of 10 ms, a far deadline wakes the thread often,
    and a near one added meanwhile still fires on time."""
    import offload.chan.context as context_mod

    monkeypatch.setattr(context_mod, "MAX_WAIT", 0.01)
    _, cancel_far = with_timeout(background(), 1e10)
    try:
        time.sleep(0.05)
        assert_a_short_deadline_fires()
    finally:
        cancel_far()


# -- what the API accepts ------------------------------------------------------------------


@pytest.mark.parametrize("bad", BAD, ids=repr)
def test_bad_timeouts_are_refused_by_every_call(bad: Any) -> None:
    ch: Chan[int] = Chan()
    full: Chan[int] = Chan(1)
    full.send(0)
    wg = WaitGroup()
    eg = ErrGroup()
    h = go(lambda: None)
    h.join(timeout=5)
    calls: dict[str, Callable[[], Any]] = {
        "with_timeout": lambda: with_timeout(background(), bad),
        "with_deadline": lambda: with_deadline(background(), bad),
        "Chan.send": lambda: full.send(1, timeout=bad),
        "Chan.recv": lambda: ch.recv(timeout=bad),
        "Chan.recv_ok": lambda: ch.recv_ok(timeout=bad),
        "select": lambda: select(recv(ch), send(full, 1), timeout=bad),
        "Handle.join": lambda: h.join(timeout=bad),
        "WaitGroup.wait": lambda: wg.wait(timeout=bad),
        "ErrGroup.wait": lambda: eg.wait(timeout=bad),
    }
    for name, call in calls.items():
        with pytest.raises(BadTimeout) as info:
            call()
        msg = str(info.value)
        assert msg.startswith(name), msg  # where
        assert ("NaN" in msg) or (type(bad).__name__ in msg), msg  # what was wrong
        assert "math.inf" in msg, msg  # what to do
    # nothing was queued by a refused call, and nothing half-happened
    assert queued(ch) == 0 and queued(full) == 0 and full.recv_nowait() == 0
    assert_a_short_deadline_fires()


@pytest.mark.parametrize("bad", BAD, ids=repr)
async def test_bad_timeouts_are_refused_by_async_select(bad: Any) -> None:
    ch: Chan[int] = Chan()
    # before the check, a NaN sat in the loop's timer heap and the select never returned
    with pytest.raises(BadTimeout, match=r"^async_select\(timeout=\.\.\.\)"):
        await asyncio.wait_for(async_select(recv(ch), timeout=bad), 2)
    assert queued(ch) == 0


def test_bad_timeout_is_an_offload_config_error() -> None:
    assert issubclass(BadTimeout, ConfigError) and issubclass(BadTimeout, OffloadError)
    # what Python raised for these values before (nan: ValueError, "1": TypeError) still
    # catches them
    assert issubclass(BadTimeout, ValueError) and issubclass(BadTimeout, TypeError)


@pytest.mark.parametrize("huge", HUGE, ids=repr)
def test_huge_thread_timeouts_wait_instead_of_raising(huge: float) -> None:
    """Before: OverflowError, and the refused waiter stayed queued to swallow a value."""
    for op in ("recv", "recv_ok", "send", "select", "join", "wait"):
        ch: Chan[int] = Chan()
        if op == "recv":
            later(0.03, ch.send, 7)
            assert ch.recv(timeout=huge) == 7
        elif op == "recv_ok":
            later(0.03, ch.send, 7)
            assert ch.recv_ok(timeout=huge) == (7, True)
        elif op == "send":
            got: list[int] = []
            later(0.03, lambda c, out: out.append(c.recv()), ch, got)
            ch.send(8, timeout=huge)
            deadline = time.monotonic() + 5
            while not got and time.monotonic() < deadline:
                time.sleep(0.001)
            assert got == [8]
        elif op == "select":
            later(0.03, ch.send, 9)
            assert select(recv(ch), recv(nil), timeout=huge) == (0, 9, True)
        elif op == "join":
            gate: Chan[None] = Chan()
            joined = go(gate.recv_ok)
            later(0.03, gate.close)
            assert joined.join(timeout=huge) == (None, False)
        elif op == "wait":
            wg = WaitGroup()
            wg.add(1)
            later(0.03, wg.done)
            wg.wait(timeout=huge)
            assert wg.count() == 0
        assert queued(ch) == 0, op


@pytest.mark.parametrize("huge", HUGE, ids=repr)
async def test_huge_async_select_timeouts_wait(huge: float) -> None:
    ch: Chan[int] = Chan()
    later(0.03, ch.send, 5)
    assert await async_select(recv(ch), timeout=huge) == (0, 5, True)


def test_long_waits_are_sliced_and_still_exact(monkeypatch: pytest.MonkeyPatch) -> None:
    """A wait longer than MAX_WAIT is a loop of shorter ones: it ends on time, and a value
    arriving between slices is taken."""
    monkeypatch.setattr(timeout_mod, "MAX_WAIT", 0.01)

    class Recording:
        """A lock that records each timed wait asked of it."""

        def __init__(self) -> None:
            self.lock = threading.Lock()
            self.lock.acquire()
            self.waits: list[float] = []

        def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
            if blocking and timeout >= 0:
                self.waits.append(timeout)
            return self.lock.acquire(blocking, timeout)

    rec = Recording()
    t0 = time.monotonic()
    assert timeout_mod.acquire(rec, 0.1) is False
    assert 0.09 <= time.monotonic() - t0 < 2
    assert len(rec.waits) >= 5 and max(rec.waits) <= 0.01, rec.waits
    rec = Recording()
    later(0.05, rec.lock.release)
    assert timeout_mod.acquire(rec, 1e300) is True
    assert max(rec.waits) <= 0.01

    ch: Chan[int] = Chan()
    t0 = time.monotonic()
    with pytest.raises(TimeoutError):
        ch.recv(timeout=0.1)
    assert 0.09 <= time.monotonic() - t0 < 2
    with pytest.raises(TimeoutError):
        select(recv(ch), timeout=0.05)
    later(0.05, ch.send, 1)
    assert ch.recv(timeout=5) == 1
    assert queued(ch) == 0


def test_negative_and_zero_timeouts_are_already_expired() -> None:
    """Go's semantics: a wait that is over before it starts polls once and never blocks."""
    ch: Chan[int] = Chan(1)
    for t in (0, 0.0, -1, -1e300, -math.inf, -(10**400)):
        with pytest.raises(TimeoutError):
            ch.recv(timeout=t)
        with pytest.raises(TimeoutError):
            select(recv(ch), timeout=t)
        ch.send_nowait(1)
        assert ch.recv(timeout=t) == 1  # ready now: it is taken, not timed out
        ctx, cancel = with_timeout(background(), t)
        assert isinstance(ctx.err(), DeadlineExceeded)
        assert ctx.remaining() == 0.0
        cancel()
    ctx, cancel = with_deadline(background(), -math.inf)
    assert isinstance(ctx.err(), DeadlineExceeded)
    cancel()
    ctx, cancel = with_deadline(background(), time.monotonic() - 1)
    assert isinstance(ctx.err(), DeadlineExceeded)
    cancel()


def test_infinite_and_int_overflowing_contexts_have_no_deadline_of_their_own() -> None:
    before = _TIMERS._pending()
    for forever in (math.inf, 10**400):
        ctx, cancel = with_timeout(background(), forever)
        assert ctx.deadline() is None and ctx.remaining() is None and ctx.err() is None
        assert _TIMERS._pending() == before  # no timer entry to hold
        cancel()
        assert ctx.err() is not None  # still a cancellable context
    ctx, cancel = with_deadline(background(), math.inf)
    assert ctx.deadline() is None
    cancel()
    # under a parent with a deadline, the parent's deadline still applies
    parent, cancel_parent = with_timeout(background(), 0.05)
    child, cancel_child = with_timeout(parent, math.inf)
    assert child.deadline() == parent.deadline()
    _, ok = child.done().recv_ok(timeout=5)
    assert not ok and isinstance(child.err(), DeadlineExceeded)
    cancel_child()
    cancel_parent()


def test_huge_finite_deadlines_are_real_deadlines() -> None:
    """A task deadline far in the future is kept (Go keeps one 292 years away, too)."""
    ctx, cancel = with_timeout(background(), 1e300)
    try:
        assert ctx.deadline() == pytest.approx(1e300)
        assert ctx.err() is None
        time.sleep(0.05)  # the timer thread has taken the entry and gone to sleep towards it
        assert_a_short_deadline_fires()
    finally:
        cancel()


def test_other_real_numbers_are_accepted() -> None:
    ctx, cancel = with_timeout(background(), Fraction(1, 20))
    try:
        _, ok = ctx.done().recv_ok(timeout=Fraction(5))
        assert not ok and isinstance(ctx.err(), DeadlineExceeded)
    finally:
        cancel()
    ch: Chan[int] = Chan()
    with pytest.raises(TimeoutError):
        ch.recv(timeout=Fraction(1, 100))
