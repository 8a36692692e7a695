"""Context, WaitGroup, ErrGroup and go()."""

from __future__ import annotations

import asyncio
import contextvars
import threading
import time

import pytest

from offload.chan import (
    BlockingCallInLoop,
    Canceled,
    Chan,
    ChanPanic,
    DeadlineExceeded,
    ErrGroup,
    WaitGroup,
    async_select,
    background,
    go,
    nil,
    recv,
    select,
    with_cancel,
    with_deadline,
    with_timeout,
    with_value,
)
from offload.chan.context import _TIMERS

pytestmark = pytest.mark.timeout(30)


def test_background() -> None:
    bg = background()
    assert bg.done() is nil
    assert bg.err() is None and bg.deadline() is None and bg.remaining() is None
    assert bg.value("k") is None


def test_cancel_flows_down_never_up() -> None:
    parent, cancel_parent = with_cancel(background())
    child, cancel_child = with_cancel(with_value(parent, "k", 1))
    grandchild, _ = with_cancel(child)
    cancel_child()
    assert isinstance(child.err(), Canceled) and str(child.err()) == "context canceled"
    assert grandchild.err() is child.err()
    assert parent.err() is None
    assert select(recv(child.done()), default=True)[0] == 0
    assert select(recv(parent.done()), default=True)[0] == -1
    err = child.err()
    cancel_child()
    cancel_parent()
    assert child.err() is err  # never changes
    assert isinstance(parent.err(), Canceled)
    late, _ = with_cancel(parent)
    assert late.err() is parent.err()  # born cancelled


def test_cancelled_child_detaches_from_parent() -> None:
    parent, cancel = with_cancel(background())
    for _ in range(100):
        _, c = with_cancel(parent)
        c()
    assert parent._children == set()  # type: ignore[attr-defined]
    cancel()


def test_deadline_fires_and_is_a_timeout() -> None:
    ctx, cancel = with_timeout(background(), 0.05)
    assert 0 < ctx.remaining() <= 0.05  # type: ignore[operator]
    t0 = time.monotonic()
    ctx.done().recv_ok(timeout=5)
    assert 0.04 <= time.monotonic() - t0 < 2
    assert isinstance(ctx.err(), DeadlineExceeded) and isinstance(ctx.err(), TimeoutError)
    assert str(ctx.err()) == "context deadline exceeded"
    assert ctx.remaining() == 0.0
    with pytest.raises(DeadlineExceeded):
        ctx.check()
    cancel()
    assert isinstance(ctx.err(), DeadlineExceeded)


def test_children_inherit_earlier_deadline() -> None:
    parent, cp = with_timeout(background(), 10)
    child, cc = with_timeout(parent, 100)
    assert child.deadline() == parent.deadline()
    sooner, cs = with_deadline(parent, time.monotonic() + 1)
    assert sooner.deadline() < parent.deadline()  # type: ignore[operator]
    past, _ = with_deadline(parent, time.monotonic() - 1)
    assert isinstance(past.err(), DeadlineExceeded)
    for c in (cs, cc, cp):
        c()


def test_cancel_releases_timer() -> None:
    before = _TIMERS._pending()
    cancels = [with_timeout(background(), 60)[1] for _ in range(50)]
    assert _TIMERS._pending() == before + 50
    for c in cancels:
        c()
    assert _TIMERS._pending() == before


def test_timer_thread_is_shared_and_exits_when_idle() -> None:
    cancels = [with_timeout(background(), 30)[1] for _ in range(20)]
    names = [t.name for t in threading.enumerate() if t.name == "offload.chan-timers"]
    assert len(names) == 1
    for c in cancels:
        c()
    deadline = time.monotonic() + 3
    while any(t.name == "offload.chan-timers" for t in threading.enumerate()):
        assert time.monotonic() < deadline, "timer thread did not exit"
        time.sleep(0.05)


def test_values() -> None:
    ctx = with_value(with_value(background(), "a", 1), "b", 2)
    ctx2, cancel = with_cancel(ctx)
    ctx3 = with_value(ctx2, "a", 3)
    assert (ctx3.value("a"), ctx3.value("b"), ctx3.value("zz")) == (3, 2, None)
    assert ctx2.value("a") == 1
    cancel()


async def test_context_done_in_async_select() -> None:
    ctx, cancel = with_timeout(background(), 0.02)
    work: Chan[int] = Chan()
    i, _, ok = await async_select(recv(work), recv(ctx.done()))
    assert (i, ok) == (1, False)
    cancel()


def test_waitgroup() -> None:
    wg = WaitGroup()
    wg.wait(timeout=0)  # zero: returns at once
    wg.add(3)
    with pytest.raises(TimeoutError):
        wg.wait(timeout=0.01)
    for _ in range(3):
        threading.Thread(target=wg.done).start()
    wg.wait(timeout=5)
    with pytest.raises(ChanPanic, match="sync: negative WaitGroup counter"):
        wg.done()
    assert wg.count() == 0


async def test_waitgroup_async_and_loop_guard() -> None:
    wg = WaitGroup()
    wg.add(2)

    async def worker() -> None:
        await asyncio.sleep(0.01)
        wg.done()

    go(worker)
    threading.Thread(target=wg.done).start()
    await asyncio.wait_for(wg.async_wait(), 5)
    wg.add(1)
    with pytest.raises(BlockingCallInLoop):
        wg.wait()
    wg.done()


def test_errgroup_first_error_cancels() -> None:
    g, ctx = ErrGroup.with_context(background())
    saw: list[object] = []

    def waiter() -> None:
        ctx.done().recv_ok(timeout=5)
        saw.append(ctx.err())

    def fail(msg: str, delay: float) -> None:
        time.sleep(delay)
        raise ValueError(msg)

    g.go(waiter)
    g.go(fail, "first", 0.01)
    g.go(fail, "second", 0.2)
    with pytest.raises(ValueError, match="first"):
        g.wait(timeout=5)
    assert isinstance(saw[0], Canceled)


def test_errgroup_wait_cancels_ctx_and_limit() -> None:
    g, ctx = ErrGroup.with_context(background())
    g.set_limit(2)
    running = 0
    peak = 0
    lock = threading.Lock()

    def work() -> None:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        time.sleep(0.01)
        with lock:
            running -= 1

    for _ in range(8):
        g.go(work)
    g.wait(timeout=5)
    assert peak <= 2
    assert isinstance(ctx.err(), Canceled)


def test_errgroup_try_go() -> None:
    g = ErrGroup()
    g.set_limit(1)
    release: Chan[None] = Chan()
    assert g.try_go(release.recv)
    assert not g.try_go(release.recv)
    with pytest.raises(ChanPanic):
        g.set_limit(3)
    release.send(None)
    g.wait(timeout=5)
    assert g.try_go(lambda: None)
    g.wait(timeout=5)


async def test_errgroup_coroutines() -> None:
    g, ctx = ErrGroup.with_context(background())
    g.set_limit(2)
    done: list[int] = []

    async def ok(i: int) -> None:
        await asyncio.sleep(0.01)
        done.append(i)

    async def bad() -> None:
        await asyncio.sleep(0.02)
        raise KeyError("boom")

    async def watcher() -> None:
        await ctx.done().async_recv_ok()
        done.append(-1)

    g.go(watcher)
    for i in range(4):
        g.go(ok, i)
    g.go(bad)
    with pytest.raises(KeyError):
        await asyncio.wait_for(g.async_wait(), 5)
    assert sorted(done) == [-1, 0, 1, 2, 3]


def test_go_thread_result_exception_contextvars() -> None:
    var: contextvars.ContextVar[str] = contextvars.ContextVar("var")
    var.set("copied")
    assert go(var.get).join(5) == "copied"
    assert go(lambda a, b=0: a + b, 1, b=2).join(5) == 3
    with pytest.raises(ZeroDivisionError):
        go(lambda: 1 / 0).join(5)
    h = go(time.sleep, 0.2)
    with pytest.raises(TimeoutError):
        h.join(timeout=0.01)
    assert not h.finished()
    assert h.join(5) is None and h.finished()


async def test_go_coroutine_on_running_loop() -> None:
    async def f(x: int) -> int:
        await asyncio.sleep(0)
        return x * 2

    h = go(f, 21)
    assert h.task is not None and h.thread is None
    assert await h == 42
    h2 = go(lambda: 5)
    assert await h2 == 5  # a thread, awaited from the loop

    async def never() -> None:
        await asyncio.sleep(10)

    h3 = go(never)
    h3.task.cancel()  # type: ignore[union-attr]
    with pytest.raises(asyncio.CancelledError):
        await h3


def test_go_coroutine_without_loop_runs_on_own_thread() -> None:
    async def f() -> str:
        await asyncio.sleep(0)
        return "ran"

    h = go(f)
    assert h.thread is not None
    assert h.join(5) == "ran"
