"""Ports of Go's test/chan/*.go, each run on threads, asyncio tasks and a mix of both.

Go programs may exit with goroutines still blocked; these ports shut every goroutine down
(close a channel or a quit channel) so that the runner can check nothing is left running.
"""

from __future__ import annotations

import heapq
from fractions import Fraction
from typing import Any

import pytest

from offload.chan import Chan, ChanPanic, nil, recv, send

from .conftest import Ops, Runtime

pytestmark = pytest.mark.timeout(30)


async def test_doubleselect(runner: Runtime) -> None:
    """Values sent through a 4-way select and re-multiplexed arrive exactly once."""
    n = 400

    async def sender(go: Ops, chans: list[Chan[int]]) -> None:
        for i in range(n):
            await go.select(*(send(c, i) for c in chans))
        for c in chans:
            c.close()

    async def mux(go: Ops, out: Chan[int], inp: Chan[int], done: Chan[bool]) -> None:
        for v in await go.range(inp):
            await go.send(out, v)
        await go.send(done, True)

    async def main(go: Ops) -> None:
        chans: list[Chan[int]] = [Chan() for _ in range(4)]
        cmux: Chan[int] = Chan()
        done: Chan[bool] = Chan()
        go.go(sender, chans)
        for c in chans:
            go.go(mux, cmux, c, done)

        async def closer(go: Ops) -> None:
            for _ in chans:
                await go.recv(done)
            cmux.close()

        go.go(closer)
        seen = set()
        for v in await go.range(cmux):
            assert v not in seen, f"got {v} twice"
            seen.add(v)
        assert seen == set(range(n))

    await runner.run(main)


async def test_fifo_async(runner: Runtime) -> None:
    """A buffered channel is FIFO (fifo.go AsynchFifo)."""

    async def main(go: Ops) -> None:
        ch: Chan[int] = Chan(10)
        for i in range(10):
            await go.send(ch, i)
        for i in range(10):
            assert await go.recv(ch) == i

    await runner.run(main)


async def test_fifo_sync(runner: Runtime) -> None:
    """Blocked unbuffered senders are served in arrival order (fifo.go SynchFifo)."""
    n = 30

    async def chain(go: Ops, ch: Chan[int], val: int, inp: Chan[int], out: Chan[int]) -> None:
        await go.recv(inp)
        got = await go.recv(ch)
        assert got == val, (got, val)
        await go.send(out, 1)

    async def main(go: Ops) -> None:
        ch: Chan[int] = Chan()
        inp: Chan[int] = Chan()
        start = inp
        for i in range(n):
            out: Chan[int] = Chan()
            go.go(chain, ch, i, inp, out)
            inp = out
        await go.send(start, 0)
        for i in range(n):
            await go.send(ch, i)
        await go.recv(inp)

    await runner.run(main)


async def test_goroutines(runner: Runtime) -> None:
    """A value relayed along a chain of goroutines (goroutines.go)."""
    n = 60

    async def f(go: Ops, left: Chan[int], right: Chan[int]) -> None:
        await go.send(left, await go.recv(right))

    async def main(go: Ops) -> None:
        leftmost: Chan[int] = Chan()
        right = leftmost
        left = leftmost
        for _ in range(n):
            right = Chan()
            go.go(f, left, right)
            left = right
        await go.send(right, 1)
        assert await go.recv(leftmost) == 1

    await runner.run(main)


@pytest.mark.parametrize("buffer", [0, 1, 10])
async def test_nonblock(runner: Runtime, buffer: int) -> None:
    """select with default never blocks, and succeeds once a peer is ready (nonblock.go)."""

    async def main(go: Ops) -> None:
        c: Chan[int] = Chan(buffer)
        assert (await go.select(recv(c), default=True))[0] == -1
        if buffer == 0:
            assert (await go.select(send(c, 1), default=True))[0] == -1

        async def receiver(go: Ops, sync: Chan[bool]) -> None:
            assert await go.recv(c) == 123
            await go.send(sync, True)

        async def sender(go: Ops, sync: Chan[bool]) -> None:
            await go.send(c, 234)
            await go.send(sync, True)

        sync: Chan[bool] = Chan()
        go.go(receiver, sync)
        for _ in range(2000):
            if (await go.select(send(c, 123), default=True))[0] == 0:
                break
            await go.sleep(0.001)
        else:
            raise AssertionError("non-blocking send never succeeded")
        await go.recv(sync)

        go.go(sender, sync)
        if buffer > 0:
            await go.recv(sync)
        for _ in range(2000):
            i, v, ok = await go.select(recv(c), default=True)
            if i == 0:
                assert (v, ok) == (234, True)
                break
            await go.sleep(0.001)
        else:
            raise AssertionError("non-blocking receive never succeeded")
        if buffer == 0:
            await go.recv(sync)

    await runner.run(main)


async def test_powser_simplified(runner: Runtime) -> None:
    """Power series as channel pipelines (a simplified powser1.go): d/dx of the integral of
    1/(1-x) is 1/(1-x), and split copies agree."""
    n = 12

    async def ones(go: Ops, out: Chan[Any], quit_: Chan[Any]) -> None:
        while (await go.select(send(out, Fraction(1)), recv(quit_)))[0] == 0:
            pass

    async def get(go: Ops, inp: Chan[Any], quit_: Chan[Any]) -> tuple[Any, bool]:
        i, v, _ = await go.select(recv(inp), recv(quit_))
        return v, i == 0

    async def put(go: Ops, out: Chan[Any], v: Any, quit_: Chan[Any]) -> bool:
        return (await go.select(send(out, v), recv(quit_)))[0] == 0

    async def integ(go: Ops, inp: Chan[Any], out: Chan[Any], quit_: Chan[Any]) -> None:
        i = 0
        cur = Fraction(0)  # constant term of the integral
        while await put(go, out, cur, quit_):
            i += 1
            v, alive = await get(go, inp, quit_)
            if not alive:
                return
            cur = v / i

    async def deriv(go: Ops, inp: Chan[Any], out: Chan[Any], quit_: Chan[Any]) -> None:
        _, alive = await get(go, inp, quit_)
        i = 1
        while alive:
            v, alive = await get(go, inp, quit_)
            if not alive or not await put(go, out, v * i, quit_):
                return
            i += 1

    async def split(go: Ops, inp: Chan[Any], a: Chan[Any], b: Chan[Any], q: Chan[Any]) -> None:
        while True:
            v, alive = await get(go, inp, q)
            if not alive or not await put(go, a, v, q) or not await put(go, b, v, q):
                return

    async def main(go: Ops) -> None:
        quit_: Chan[Any] = Chan()
        s1, s2, s3, a, b = (Chan() for _ in range(5))
        go.go(ones, s1, quit_)
        go.go(integ, s1, s2, quit_)
        go.go(deriv, s2, s3, quit_)
        go.go(split, s3, a, b, quit_)
        for _ in range(n):
            assert await go.recv(a) == 1
            assert await go.recv(b) == 1
        quit_.close()

    await runner.run(main)


async def test_select_evaluates_once(runner: Runtime) -> None:
    """Each case expression is evaluated exactly once per select (select.go)."""

    async def main(go: Ops) -> None:
        counter = 0

        def value() -> int:
            nonlocal counter
            counter += 1
            return 1 << (counter - 1)

        a: Chan[int] = Chan(1)
        b: Chan[int] = Chan(1)
        for i in range(40):
            ca = a if i % 3 else nil
            before = counter
            idx, _, _ = await go.select(send(ca, value()), send(b, value()))
            assert counter == before + 2
            ch = ca if idx == 0 else b
            got = await go.recv(ch)
            assert got in (1 << before, 1 << (before + 1))

    await runner.run(main)


async def test_select2_no_growth(runner: Runtime) -> None:
    """Selects in a loop leave no per-iteration garbage queued (select2.go)."""
    n = 1500

    async def sender(go: Ops, c: Chan[int], dummy: Chan[int]) -> None:
        for i in range(n):
            await go.select(send(c, i), recv(dummy))

    async def main(go: Ops) -> None:
        c: Chan[int] = Chan()
        dummy: Chan[int] = Chan()
        go.go(sender, c, dummy)
        for i in range(n):
            assert await go.recv(c) == i
            if i % 100 == 0:
                assert sum(dummy._debug_waiters()) <= 1

    await runner.run(main)


async def test_select3_blocking(runner: Runtime) -> None:
    """What blocks and what never does (select3.go), with timeouts standing in for 'forever'."""

    async def main(go: Ops) -> None:
        closed: Chan[int] = Chan()
        closed.close()
        # never block
        assert await go.select(recv(closed)) == (0, None, False)
        assert (await go.select(recv(nil), recv(closed)))[0] == 1
        assert (await go.select(recv(nil), default=True))[0] == -1
        assert (await go.select(send(nil, 1), default=True))[0] == -1
        assert (await go.select(default=True))[0] == -1
        assert await go.recv_ok(closed) == (None, False)
        buf: Chan[int] = Chan(1)
        assert (await go.select(send(buf, 7)))[0] == 0
        # block
        for cases in ([recv(nil)], [send(nil, 1)], [], [recv(Chan())], [send(Chan(), 1)]):
            with pytest.raises(TimeoutError):
                await go.select(*cases, timeout=0.02)
        with pytest.raises(ChanPanic, match="send on closed channel"):
            await go.select(send(closed, 1))
        assert await go.recv(buf) == 7

    await runner.run(main)


async def test_select4_only_ready_case_assigns(runner: Runtime) -> None:
    """Only the committed case yields a value (select4.go)."""

    async def main(go: Ops) -> None:
        c: Chan[int] = Chan(1)
        c1: Chan[int] = Chan()
        await go.send(c, 42)
        assert await go.select(recv(c1), recv(c)) == (1, 42, True)

    await runner.run(main)


async def test_select5_generated(runner: Runtime) -> None:
    """Every combination of case kinds, readiness and default (a condensed select5.go)."""

    async def main(go: Ops) -> None:
        for kind in ("send", "recv"):
            for ready in (False, True):
                for with_nil in (False, True):
                    for default in (False, True):
                        c: Chan[int] = Chan(1)
                        if ready and kind == "recv":
                            await go.send(c, 5)
                        if not ready and kind == "send":
                            await go.send(c, 9)
                        case = send(c, 5) if kind == "send" else recv(c)
                        cases = [recv(nil), case] if with_nil else [case]
                        want = len(cases) - 1
                        if not ready and not default:
                            with pytest.raises(TimeoutError):
                                await go.select(*cases, timeout=0.01)
                            got = await go.recv(c) if kind == "send" else None
                            assert got in (9, None)
                            continue
                        idx, v, ok = await go.select(*cases, default=default)
                        if ready:
                            assert idx == want
                            assert (v, ok) == ((5, True) if kind == "recv" else (None, True))
                        else:
                            assert idx == -1
                        if kind == "send":
                            await go.recv(c)

    await runner.run(main)


async def test_select6_failed_cases_do_not_corrupt_queues(runner: Runtime) -> None:
    """Issue 2075: a select's failed cases must not corrupt other waiters (select6.go)."""

    async def main(go: Ops) -> None:
        c1: Chan[bool] = Chan()
        c2: Chan[bool] = Chan()
        c3: Chan[bool] = Chan()

        async def r1(go: Ops) -> None:
            await go.recv(c1)

        async def sel(go: Ops) -> None:
            idx, _, _ = await go.select(recv(c1), recv(c2))
            assert idx == 1, "dummy"
            await go.send(c3, True)
            await go.recv(c1)

        async def s2(go: Ops) -> None:
            await go.send(c2, True)

        go.go(r1)
        go.go(sel)
        go.go(s2)
        await go.recv(c3)
        await go.send(c1, True)
        await go.send(c1, True)

    await runner.run(main)


@pytest.mark.parametrize("recv_kind", [1, 2, 3])
@pytest.mark.parametrize("send_kind", [1, 2, 3])
async def test_select7_discarding_value(runner: Runtime, recv_kind: int, send_kind: int) -> None:
    """Plain, one-case-select and two-case-select ends, each paired with each (select7.go)."""

    async def receiver(go: Ops, c: Chan[int]) -> None:
        if recv_kind == 1:
            await go.recv(c)
        elif recv_kind == 2:
            await go.select(recv(c))
        else:
            await go.select(recv(c), recv(Chan()))

    async def main(go: Ops) -> None:
        c: Chan[int] = Chan()
        go.go(receiver, c)
        await go.yield_()
        if send_kind == 1:
            await go.send(c, 1)
        elif send_kind == 2:
            await go.select(send(c, 1))
        else:
            assert (await go.select(send(c, 1), send(Chan(), 1)))[0] == 0

    await runner.run(main)


async def test_sendstmt_chan_of_chans(runner: Runtime) -> None:
    """A channel received from a channel, then sent on in a non-blocking select (sendstmt.go)."""

    async def main(go: Ops) -> None:
        cc: Chan[Chan[int]] = Chan(1)
        c: Chan[int] = Chan(1)
        await go.send(cc, c)
        assert (await go.select(send(await go.recv(cc), 2), default=True))[0] == 0
        assert await go.recv(c) == 2
        b: Chan[bool] = Chan(1)
        await go.send(b, bool(0) or True)  # sendprec: c <- false || true
        assert await go.recv(b) is True

    await runner.run(main)


PRIMES = [2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41, 43, 47, 53, 59, 61, 67, 71]


async def test_sieve1(runner: Runtime) -> None:
    """The concurrent prime sieve (sieve1.go), shut down through a quit channel."""

    async def generate(go: Ops, ch: Chan[int], quit_: Chan[Any]) -> None:
        i = 2
        while (await go.select(send(ch, i), recv(quit_)))[0] == 0:
            i += 1

    async def filt(go: Ops, inp: Chan[int], out: Chan[int], p: int, quit_: Chan[Any]) -> None:
        while True:
            i, v, _ = await go.select(recv(inp), recv(quit_))
            if i == 1:
                return
            if v % p and (await go.select(send(out, v), recv(quit_)))[0] == 1:
                return

    async def main(go: Ops) -> None:
        quit_: Chan[Any] = Chan()
        ch: Chan[int] = Chan()
        go.go(generate, ch, quit_)
        got = []
        for _ in PRIMES:
            p = await go.recv(ch)
            got.append(p)
            ch1: Chan[int] = Chan()
            go.go(filt, ch, ch1, p, quit_)
            ch = ch1
        quit_.close()
        assert got == PRIMES

    await runner.run(main)


async def test_sieve2_heap_of_buffered_channels(runner: Runtime) -> None:
    """Sieve of composites merged through a heap of buffered channels (sieve2.go, reduced)."""

    async def multiples(go: Ops, p: int, out: Chan[int], quit_: Chan[Any]) -> None:
        m = p * p
        while (await go.select(send(out, m), recv(quit_)))[0] == 0:
            m += p

    async def main(go: Ops) -> None:
        quit_: Chan[Any] = Chan()
        heap: list[tuple[int, int, Chan[int]]] = []
        primes = []
        n = 2
        while len(primes) < len(PRIMES):
            while heap and heap[0][0] < n:
                _, k, ch = heapq.heappop(heap)
                heapq.heappush(heap, (await go.recv(ch), k, ch))
            if heap and heap[0][0] == n:
                n += 1
                continue
            primes.append(n)
            ch = Chan(4)
            go.go(multiples, n, ch, quit_)
            heapq.heappush(heap, (await go.recv(ch), n, ch))
            n += 1
        quit_.close()
        assert primes == PRIMES

    await runner.run(main)


async def test_zerosize_and_falsy_values(runner: Runtime) -> None:
    """None, 0, '' and False are values, never mistaken for a closed channel (zerosize.go)."""

    async def main(go: Ops) -> None:
        for cap in (0, 4):
            c: Chan[Any] = Chan(cap)

            async def producer(go: Ops, c: Chan[Any]) -> None:
                for v in (None, 0, "", False, ()):
                    await go.send(c, v)
                c.close()

            go.go(producer, c)
            assert await go.range(c) == [None, 0, "", False, ()]
            assert await go.recv_ok(c) == (None, False)

    await runner.run(main)
