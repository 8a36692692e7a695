"""Ports of Go's runtime/chan_test.go select tests, on threads, tasks and a mix."""

from __future__ import annotations

import math
from typing import Any

import pytest

from offload.chan import Chan, recv, send

from .conftest import Ops, Runtime

pytestmark = pytest.mark.timeout(30)


@pytest.mark.parametrize("cap", [0, 1])
async def test_self_select(runner: Runtime, cap: int) -> None:
    """A select with send and recv on one channel never matches itself (TestSelfSelect)."""
    iters = 300

    async def worker(go: Ops, c: Chan[int], p: int, done: Chan[bool]) -> None:
        for _ in range(iters):
            i, v, _ = await go.select(send(c, p), recv(c))
            if i == 1 and cap == 0:
                assert v != p, "self receive"
        await go.send(done, True)

    async def main(go: Ops) -> None:
        c: Chan[int] = Chan(cap)
        done: Chan[bool] = Chan(2)
        go.go(worker, c, 0, done)
        go.go(worker, c, 1, done)
        # The two workers pair up; with an odd leftover one of them may be stuck waiting for
        # a partner, so the main goroutine drains until both report done.
        finished = 0
        while finished < 2:
            i, _, _ = await go.select(recv(done), recv(c))
            finished += i == 0

    await runner.run(main)


async def test_select_stress(runner: Runtime) -> None:
    """Plain and select senders and receivers on 4 channels, 2 buffered (TestSelectStress)."""
    n = 150

    async def plain_sender(go: Ops, c: Chan[int]) -> None:
        for _ in range(n):
            await go.send(c, 0)

    async def plain_receiver(go: Ops, c: Chan[int], done: Chan[bool]) -> None:
        for _ in range(n):
            await go.recv(c)
        await go.send(done, True)

    async def select_sender(go: Ops, cs: list[Chan[int]], done: Chan[bool]) -> None:
        live = list(cs)
        counts = [0] * 4
        while any(c is not None for c in live):
            cases = [send(c, 0) if c is not None else send(Chan.nil(), 0) for c in live]
            i, _, _ = await go.select(*cases)
            counts[i] += 1
            if counts[i] == n:
                live[i] = None
        await go.send(done, True)

    async def select_receiver(go: Ops, cs: list[Chan[int]], done: Chan[bool]) -> None:
        live = list(cs)
        counts = [0] * 4
        while any(c is not None for c in live):
            cases = [recv(c) if c is not None else recv(Chan.nil()) for c in live]
            i, _, ok = await go.select(*cases)
            assert ok
            counts[i] += 1
            if counts[i] == n:
                live[i] = None
        await go.send(done, True)

    async def main(go: Ops) -> None:
        cs: list[Any] = [Chan(), Chan(), Chan(2), Chan(3)]
        done: Chan[bool] = Chan(8)
        for c in cs:
            go.go(plain_sender, c)
            go.go(plain_receiver, c, done)
        go.go(select_sender, cs, done)
        go.go(select_receiver, cs, done)
        for _ in range(6):
            await go.recv(done)

    await runner.run(main)


async def test_select_fairness(runner: Runtime) -> None:
    """Ready cases are chosen uniformly (TestSelectFairness, same 4-sigma-ish bound)."""
    trials = 3000

    async def main(go: Ops) -> None:
        c1: Chan[int] = Chan(trials + 1)
        c2: Chan[int] = Chan(trials + 1)
        for _ in range(trials + 1):
            c1.send_nowait(1)
            c2.send_nowait(2)
        c3: Chan[int] = Chan()
        c4: Chan[int] = Chan()
        counts = [0, 0]
        for _ in range(trials):
            _, v, _ = await go.select(recv(c3), recv(c1), recv(c4), recv(c2))
            counts[v - 1] += 1
        r = 5 * math.sqrt(trials / 4)
        assert abs(counts[0] - trials / 2) < r, counts
        while len(c1):
            c1.recv_nowait()
        while len(c2):
            c2.recv_nowait()

    await runner.run(main)


async def test_multi_consumer(runner: Runtime) -> None:
    """Many workers share a queue; every item is processed exactly once (TestMultiConsumer)."""
    nwork, niter = 6, 600

    async def worker(go: Ops, q: Chan[int], r: Chan[int], done: Chan[bool]) -> None:
        for v in await go.range(q):
            await go.send(r, v)
        await go.send(done, True)

    async def main(go: Ops) -> None:
        q: Chan[int] = Chan(nwork * 3)
        r: Chan[int] = Chan(nwork * 3)
        done: Chan[bool] = Chan(nwork)

        async def producer(go: Ops) -> None:
            for i in range(niter):
                await go.send(q, i)
            q.close()

        async def closer(go: Ops) -> None:
            for _ in range(nwork):
                await go.recv(done)
            r.close()

        for _ in range(nwork):
            go.go(worker, q, r, done)
        go.go(producer)
        go.go(closer)
        got = await go.range(r)
        assert sorted(got) == list(range(niter))

    await runner.run(main)


async def test_pseudo_random_send(runner: Runtime) -> None:
    """A two-case send select picks both cases (TestPseudoRandomSend)."""
    n = 200

    async def main(go: Ops) -> None:
        c: Chan[int] = Chan()
        got: Chan[list[int]] = Chan(1)

        async def receiver(go: Ops) -> None:
            await go.send(got, [await go.recv(c) for _ in range(n)])

        go.go(receiver)
        for _ in range(n):
            await go.select(send(c, 0), send(c, 1))
        values = await go.recv(got)
        ones = sum(values)
        assert n / 10 < ones < n * 9 / 10, ones

    await runner.run(main)


async def test_select_duplicate_channel(runner: Runtime) -> None:
    """A select listing one channel twice stays consistent (TestSelectDuplicateChannel)."""

    async def main(go: Ops) -> None:
        c: Chan[int] = Chan()
        d: Chan[int] = Chan()
        e: Chan[int] = Chan()

        async def g1(go: Ops) -> None:
            await go.select(recv(c), recv(c), recv(d))
            await go.send(e, 9)

        async def g2(go: Ops) -> None:
            await go.recv(c)

        go.go(g1)
        await go.sleep(0.01)
        go.go(g2)
        await go.sleep(0.01)
        await go.send(d, 7)
        await go.recv(e)
        await go.send(c, 8)

    await runner.run(main)
