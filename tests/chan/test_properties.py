"""Property tests: random programs checked against a sequential model of Go channels."""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from offload.chan import Chan, ChanPanic, Closed, WouldBlock, async_select, recv, select, send

pytestmark = pytest.mark.timeout(60)

NCH = 3


class Model:
    def __init__(self, caps: list[int]) -> None:
        self.caps = caps
        self.bufs: list[deque[int]] = [deque() for _ in caps]
        self.closed = [False] * len(caps)

    def send_ready(self, i: int) -> bool:
        return self.closed[i] or len(self.bufs[i]) < self.caps[i]

    def recv_ready(self, i: int) -> bool:
        return bool(self.bufs[i]) or self.closed[i]


op = st.one_of(
    st.tuples(st.just("send"), st.integers(0, NCH - 1), st.integers(0, 99)),
    st.tuples(st.just("recv"), st.integers(0, NCH - 1)),
    st.tuples(st.just("close"), st.integers(0, NCH - 1)),
    st.tuples(
        st.just("select"),
        st.lists(
            st.tuples(st.booleans(), st.integers(0, NCH - 1), st.integers(0, 99)),
            min_size=0,
            max_size=4,
        ),
    ),
)


@settings(max_examples=150, deadline=None)
@given(caps=st.lists(st.integers(0, 3), min_size=NCH, max_size=NCH), ops=st.lists(op, max_size=40))
def test_nonblocking_ops_match_model(caps: list[int], ops: list[Any]) -> None:
    """send/recv_nowait, close and select(default=True) behave exactly like the model."""
    chans: list[Chan[int]] = [Chan(c) for c in caps]
    m = Model(caps)
    for o in ops:
        kind = o[0]
        if kind == "send":
            _, i, v = o
            if m.closed[i]:
                with pytest.raises(ChanPanic):
                    chans[i].send_nowait(v)
            elif m.send_ready(i):
                chans[i].send_nowait(v)
                m.bufs[i].append(v)
            else:
                with pytest.raises(WouldBlock):
                    chans[i].send_nowait(v)
        elif kind == "recv":
            i = o[1]
            if m.bufs[i]:
                assert chans[i].recv_nowait() == m.bufs[i].popleft()
            elif m.closed[i]:
                with pytest.raises(Closed):
                    chans[i].recv_nowait()
            else:
                with pytest.raises(WouldBlock):
                    chans[i].recv_nowait()
        elif kind == "close":
            i = o[1]
            if m.closed[i]:
                with pytest.raises(ChanPanic):
                    chans[i].close()
            else:
                chans[i].close()
                m.closed[i] = True
        else:
            cases_spec = o[1]
            cases = [send(chans[i], v) if s else recv(chans[i]) for s, i, v in cases_spec]
            ready = [
                k
                for k, (s, i, _) in enumerate(cases_spec)
                if (m.send_ready(i) if s else m.recv_ready(i))
            ]
            try:
                idx, val, ok = select(*cases, default=True)
            except ChanPanic:
                assert any(s and m.closed[i] for s, i, _ in cases_spec)
                continue
            if not ready:
                assert idx == -1
                continue
            assert idx in ready
            s, i, v = cases_spec[idx]
            assert not (s and m.closed[i])
            if s:
                m.bufs[i].append(v)
            elif m.bufs[i]:
                assert (val, ok) == (m.bufs[i].popleft(), True)
            else:
                assert (val, ok) == (None, False)
    for c, b in zip(chans, m.bufs, strict=True):
        assert len(c) == len(b)


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    caps=st.lists(st.integers(0, 2), min_size=1, max_size=3),
    producers=st.lists(
        st.tuples(st.booleans(), st.booleans(), st.integers(0, 30)), min_size=1, max_size=4
    ),
    consumers=st.lists(st.tuples(st.booleans(), st.booleans()), min_size=1, max_size=4),
)
def test_concurrent_programs_deliver_exactly_once(
    caps: list[int], producers: list[Any], consumers: list[Any]
) -> None:
    """Random producers and consumers on threads and tasks, plain or select: the multiset
    received equals the multiset sent, and every waiter is gone afterwards."""
    chans: list[Chan[int]] = [Chan(c) for c in caps]
    expected: list[int] = []
    got: list[int] = []
    lock = threading.Lock()
    plans = []
    for p, (threaded, use_select, n) in enumerate(producers):
        values = [p * 1000 + k for k in range(n)]
        expected.extend(values)
        plans.append((threaded, use_select, values, chans[p % len(chans)]))
    remaining = [sum(1 for p in plans if p[3] is c) for c in chans]
    rlock = threading.Lock()

    def finish(c: Chan[int]) -> None:
        with rlock:
            k = chans.index(c)
            remaining[k] -= 1
            if remaining[k] == 0:
                c.close()

    for k, c in enumerate(chans):
        if remaining[k] == 0:
            c.close()

    def sync_producer(use_select: bool, values: list[int], c: Chan[int]) -> None:
        for v in values:
            if use_select:
                select(send(c, v))
            else:
                c.send(v)
        finish(c)

    async def async_producer(use_select: bool, values: list[int], c: Chan[int]) -> None:
        for v in values:
            if use_select:
                await async_select(send(c, v))
            else:
                await c.async_send(v)
        finish(c)

    def sync_consumer(use_select: bool) -> None:
        live = list(chans)
        while live:
            if use_select:
                i, v, ok = select(*(recv(c) for c in live))
            else:
                i = 0
                v, ok = live[0].recv_ok()
            if ok:
                with lock:
                    got.append(v)
            else:
                live.pop(i)

    async def async_consumer(use_select: bool) -> None:
        live = list(chans)
        while live:
            if use_select:
                i, v, ok = await async_select(*(recv(c) for c in live))
            else:
                i = 0
                v, ok = await live[0].async_recv_ok()
            if ok:
                with lock:
                    got.append(v)
            else:
                live.pop(i)

    async def main() -> None:
        threads = []
        tasks = []
        for threaded, use_select, values, c in plans:
            if threaded:
                threads.append(threading.Thread(target=sync_producer, args=(use_select, values, c)))
            else:
                tasks.append(async_producer(use_select, values, c))
        for threaded, use_select in consumers:
            if threaded:
                threads.append(threading.Thread(target=sync_consumer, args=(use_select,)))
            else:
                tasks.append(async_consumer(use_select))
        for t in threads:
            t.start()
        await asyncio.wait_for(asyncio.gather(*tasks), 20)
        for t in threads:
            await asyncio.to_thread(t.join, 20)
            assert not t.is_alive()

    asyncio.run(main())
    assert sorted(got) == sorted(expected)
    for c in chans:
        assert c._debug_waiters() == (0, 0)
