"""Channel semantics beyond Go's tests: errors, timeouts, nil, loops, cancellation."""

from __future__ import annotations

import asyncio
import random
import threading
import time
from typing import Any

import pytest

from offload.chan import (
    BlockingCallInLoop,
    Chan,
    ChanPanic,
    Closed,
    WouldBlock,
    async_select,
    nil,
    recv,
    select,
    send,
)
from offload.errors import OffloadError

from .conftest import queued

pytestmark = pytest.mark.timeout(30)


def later(delay: float, fn: Any, *args: Any) -> threading.Thread:
    def run() -> None:
        time.sleep(delay)
        fn(*args)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def test_basic_properties() -> None:
    c: Chan[int] = Chan(3)
    assert (len(c), c.cap) == (0, 3)
    c.send(1)
    c.send_nowait(2)
    assert len(c) == 2
    assert "len=2 cap=3" in repr(c)
    assert Chan().cap == 0
    with pytest.raises(ChanPanic):
        Chan(-1)


def test_errors_are_offload_errors() -> None:
    for exc in (Closed, ChanPanic, WouldBlock, BlockingCallInLoop):
        assert issubclass(exc, OffloadError)


def test_nowait_forms() -> None:
    c: Chan[int] = Chan(1)
    with pytest.raises(WouldBlock):
        c.recv_nowait()
    c.send_nowait(5)
    with pytest.raises(WouldBlock):
        c.send_nowait(6)
    assert c.recv_nowait() == 5
    u: Chan[int] = Chan()
    with pytest.raises(WouldBlock):
        u.send_nowait(1)
    assert queued(u) == 0


def test_close_semantics() -> None:
    c: Chan[int] = Chan(2)
    c.send(1)
    c.send(0)
    c.close()
    with pytest.raises(ChanPanic, match=r"^send on closed channel$"):
        c.send(3)
    with pytest.raises(ChanPanic, match=r"^close of closed channel$"):
        c.close()
    assert c.recv() == 1
    assert c.recv_ok() == (0, True)
    assert c.recv_ok() == (None, False)
    with pytest.raises(Closed):
        c.recv()
    with pytest.raises(Closed):
        c.recv_nowait()
    assert list(c) == []


def test_close_wakes_every_waiter() -> None:
    c: Chan[int] = Chan()
    results: list[Any] = []

    def receiver() -> None:
        results.append(c.recv_ok())

    ts = [threading.Thread(target=receiver) for _ in range(3)]
    for t in ts:
        t.start()
    while queued(c) < 3:
        time.sleep(0.001)
    c.close()
    for t in ts:
        t.join(5)
    assert results == [(None, False)] * 3

    d: Chan[int] = Chan()
    results.clear()

    def sender() -> None:
        try:
            d.send(1)
        except ChanPanic as e:
            results.append(str(e))

    ts = [threading.Thread(target=sender) for _ in range(2)]
    for t in ts:
        t.start()
    while queued(d) < 2:
        time.sleep(0.001)
    d.close()
    for t in ts:
        t.join(5)
    assert results == ["send on closed channel"] * 2


async def test_close_wakes_async_waiters() -> None:
    c: Chan[int] = Chan()
    r = asyncio.create_task(c.async_recv_ok())
    s = asyncio.create_task(Chan().async_send(1))
    d: Chan[int] = Chan()
    s2 = asyncio.create_task(d.async_send(1))
    await asyncio.sleep(0.01)
    c.close()
    d.close()
    assert await r == (None, False)
    with pytest.raises(ChanPanic):
        await s2
    s.cancel()
    with pytest.raises(asyncio.CancelledError):
        await s


def test_iteration_until_closed() -> None:
    c: Chan[int] = Chan()

    def produce() -> None:
        for i in range(5):
            c.send(i)
        c.close()

    later(0, produce)
    assert list(c) == [0, 1, 2, 3, 4]


async def test_async_iteration_from_thread_producer() -> None:
    c: Chan[int] = Chan(2)

    def produce() -> None:
        for i in range(50):
            c.send(i)
        c.close()

    later(0, produce)
    assert [v async for v in c] == list(range(50))


def test_timeouts_leave_nothing_behind() -> None:
    c: Chan[int] = Chan()
    t0 = time.monotonic()
    with pytest.raises(TimeoutError):
        c.send(1, timeout=0.05)
    with pytest.raises(TimeoutError):
        c.recv(timeout=0.05)
    with pytest.raises(TimeoutError):
        c.recv_ok(timeout=0)
    assert time.monotonic() - t0 >= 0.09
    assert queued(c) == 0
    with pytest.raises(WouldBlock):
        c.recv_nowait()


def test_nil_channel() -> None:
    assert Chan.nil() is nil
    assert (len(nil), nil.cap) == (0, 0)
    with pytest.raises(TimeoutError):
        nil.recv(timeout=0.01)
    with pytest.raises(TimeoutError):
        nil.send(1, timeout=0.01)
    with pytest.raises(WouldBlock):
        nil.send_nowait(1)
    with pytest.raises(WouldBlock):
        nil.recv_nowait()
    with pytest.raises(ChanPanic, match="close of nil channel"):
        nil.close()
    assert select(recv(nil), send(nil, 1), default=True) == (-1, None, False)


async def test_nil_channel_async_blocks_until_cancelled() -> None:
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.02):
            await nil.async_recv()
    with pytest.raises(TimeoutError):
        await async_select(recv(nil), timeout=0.02)


async def test_blocking_call_in_running_loop_raises() -> None:
    c: Chan[int] = Chan(1)
    for call in (lambda: c.send(1), c.recv, c.recv_ok, lambda: select(recv(c))):
        with pytest.raises(BlockingCallInLoop, match="async_"):
            call()
    assert queued(c) == 0 and len(c) == 0
    c.send_nowait(1)  # the non-blocking forms are fine on a loop
    assert c.recv_nowait() == 1


async def test_thread_sends_coroutine_on_other_loop_receives() -> None:
    c: Chan[str] = Chan()
    got: list[str] = []

    def other_loop() -> None:
        async def main() -> None:
            got.append(await c.async_recv())
            await c.async_send("pong")

        asyncio.run(main())

    t = threading.Thread(target=other_loop)
    t.start()
    await c.async_send("ping")
    assert await c.async_recv() == "pong"
    await asyncio.to_thread(t.join)
    assert got == ["ping"]


async def test_cancelled_recv_after_handoff_puts_value_back() -> None:
    for cap in (0, 1):
        c: Chan[int] = Chan(cap)
        t = asyncio.create_task(c.async_recv())
        await asyncio.sleep(0)
        c.send_nowait(42)  # handed straight to the waiting task ...
        t.cancel()  # ... which is cancelled before it can run
        with pytest.raises(asyncio.CancelledError):
            await t
        assert c.recv_nowait() == 42
        assert queued(c) == 0


async def test_cancelled_select_after_handoff_puts_value_back() -> None:
    c: Chan[int] = Chan()
    other: Chan[int] = Chan()
    t = asyncio.create_task(async_select(recv(other), recv(c)))
    await asyncio.sleep(0)
    c.send_nowait(7)
    t.cancel()
    with pytest.raises(asyncio.CancelledError):
        await t
    assert c.recv_nowait() == 7
    assert queued(c) == queued(other) == 0


async def test_cancelled_before_handoff_commits_nothing() -> None:
    a: Chan[int] = Chan()
    b: Chan[int] = Chan()
    c: Chan[int] = Chan()
    tasks = [
        asyncio.create_task(a.async_recv()),
        asyncio.create_task(b.async_send(1)),
        asyncio.create_task(async_select(recv(c), send(c, 2))),
    ]
    await asyncio.sleep(0.01)
    assert queued(a) == queued(b) == 1 and queued(c) == 2
    for t in tasks:
        t.cancel()
    for t in tasks:
        with pytest.raises(asyncio.CancelledError):
            await t
    for ch in (a, b, c):
        with pytest.raises(WouldBlock):
            ch.recv_nowait()


async def test_random_cancellation_loses_no_value() -> None:
    """Receivers cancelled at random while a thread sends: every value arrives once."""
    n = 400
    c: Chan[int] = Chan(random.choice([0, 2]))
    got: list[int] = []

    async def consumer() -> None:
        while True:
            v, ok = await c.async_recv_ok()
            if not ok:
                return
            got.append(v)

    def produce() -> None:
        for i in range(n):
            c.send(i)
        c.close()

    t = later(0, produce)
    while t.is_alive() or len(c):
        tasks = [asyncio.create_task(consumer()) for _ in range(3)]
        await asyncio.sleep(random.random() * 0.002)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    await asyncio.to_thread(t.join)
    assert sorted(got) == list(range(n))


def test_thread_timeouts_never_half_happen() -> None:
    """Receivers with tiny timeouts racing a sender with tiny timeouts: exactly-once."""
    c: Chan[int] = Chan()
    sent: list[int] = []
    got: list[int] = []
    stop = threading.Event()

    def consumer() -> None:
        while not stop.is_set():
            try:
                if random.random() < 0.5:
                    got.append(c.recv(timeout=0.0005))
                else:
                    _, v, _ = select(recv(c), timeout=0.0005)
                    got.append(v)
            except TimeoutError:
                pass

    ts = [threading.Thread(target=consumer) for _ in range(3)]
    for t in ts:
        t.start()
    for i in range(600):
        try:
            c.send(i, timeout=0.0005)
            sent.append(i)
        except TimeoutError:
            pass
    stop.set()
    for t in ts:
        t.join(5)
    assert sorted(got) == sent


async def test_async_select_timeout_and_values() -> None:
    a: Chan[int] = Chan()
    with pytest.raises(TimeoutError):
        await async_select(recv(a), timeout=0.01)
    assert await async_select(recv(a), default=True) == (-1, None, False)
    later(0.01, a.send, 3)
    assert await async_select(recv(a), timeout=5) == (0, 3, True)
    b: Chan[int] = Chan()
    t = asyncio.create_task(b.async_recv())
    await asyncio.sleep(0)
    assert await async_select(send(b, 9)) == (0, None, True)
    assert await t == 9


def test_select_rejects_non_cases() -> None:
    with pytest.raises(TypeError):
        select(Chan(), default=True)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        recv(object())  # type: ignore[arg-type]


def test_select_woken_by_close() -> None:
    c: Chan[int] = Chan()
    later(0.01, c.close)
    assert select(recv(Chan()), recv(c)) == (1, None, False)
    d: Chan[int] = Chan()
    later(0.01, d.close)
    with pytest.raises(ChanPanic, match="send on closed channel"):
        select(send(d, 1))


def test_both_ends_selects() -> None:
    c: Chan[int] = Chan()
    out: list[Any] = []
    t = later(0, lambda: out.append(select(recv(Chan()), send(c, 5))))
    assert select(recv(c), recv(Chan())) == (0, 5, True)
    t.join(5)
    assert out == [(1, None, True)]
