"""Conformance checks: wait, the clock, metrics, and the broker's own life cycle (open,
close, inline). See :mod:`offload.testing.conformance`."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from ..brokers.base import Broker, Lease, TaskMetrics
from ..core.policy import QueuePolicy
from ..errors import OffloadError
from .conformance_support import (
    BrokerFactory,
    assert_wakes,
    claim_until,
    declare,
    make_broker,
    new_task,
    opened,
    opened_many,
    qname,
    same_leases,
)


async def check_wait_times_out(factory: BrokerFactory) -> None:
    """With nothing to claim, wait blocks for about its timeout (no busy polling, no
    oversleeping); a zero timeout returns at once."""
    q = qname("wait-idle")
    async with opened(factory) as b:
        await declare(b, q)
        t = time.monotonic()
        await b.wait([q], 0.0)
        assert time.monotonic() - t < 0.2, "wait(timeout=0) did not return at once"
        t = time.monotonic()
        await b.wait([q], 0.6)
        first = time.monotonic() - t
        assert first < 0.6 + 0.5, f"wait(timeout=0.6) took {first:.2f}s"
        returns, longest, start = 0, first, time.monotonic()
        while time.monotonic() - start < 1.2:
            t = time.monotonic()
            await b.wait([q], 0.4)
            longest = max(longest, time.monotonic() - t)
            returns += 1
        assert returns <= 8, f"wait(timeout=0.4) returned {returns} times in 1.2s: busy polling"
        assert longest >= 0.3, f"wait never blocked near its timeout (longest {longest:.2f}s)"


async def check_wait_wakes_on_enqueue(factory: BrokerFactory) -> None:
    """wait returns promptly after another broker instance enqueues to a waited queue."""
    q, other = qname("wake-enq"), qname("wake-enq-other")
    async with opened_many(factory, 2) as (waiter, sender):
        await declare(waiter, q)
        await declare(waiter, other)

        async def enqueue() -> None:
            assert await sender.enqueue([new_task(q)]) == [True]

        await assert_wakes(waiter, [other, q], enqueue, what="an enqueue by another instance")
        assert len(await waiter.claim([q], 10)) == 1


async def check_wait_wakes_on_retry_release_requeue(factory: BrokerFactory) -> None:
    """wait returns promptly when another instance's retry(0), release or requeue_dead
    makes a task claimable."""
    q = qname("wake-back")
    async with opened_many(factory, 2) as (waiter, other):
        await declare(waiter, q, lease=30.0)
        await other.enqueue([new_task(q)])
        for what in ("retry", "release", "requeue_dead"):
            [c] = await claim_until(other, [q], 1)
            if what == "requeue_dead":
                assert await other.dead_letter(c.lease, "E", "tb") is True

            async def act(what: str = what, lease=c.lease) -> None:
                if what == "retry":
                    assert await other.retry(lease, 0.0, "E") is True
                elif what == "release":
                    await other.release([lease])
                else:
                    assert await other.requeue_dead(q) == 1

            await assert_wakes(waiter, [q], act, what=f"a {what} by another instance")


async def check_wait_wakes_on_ack_when_saturated(factory: BrokerFactory) -> None:
    """A queue at max_concurrent blocks wait; an ack by another instance wakes it."""
    q = qname("wake-ack")
    async with opened_many(factory, 2) as (waiter, worker):
        await declare(waiter, q, max_concurrent=1, lease=30.0)
        await worker.enqueue([new_task(q), new_task(q)])
        [c] = await worker.claim([q], 10)

        async def ack() -> None:
            await worker.ack([c.lease])

        await assert_wakes(waiter, [q], ack, what="an ack freeing a max_concurrent slot")
        assert len(await waiter.claim([q], 10)) == 1


async def _wakes_when_due(
    b: Broker, q: str, due: float, what: str, setup: Callable[[], Awaitable[object]]
) -> None:
    """Wait/claim like a worker until a task comes due at broker time ``due``: it must be
    claimed soon after (not after wait's 10 s timeout), with few spurious returns."""
    await setup()
    start, returns = time.monotonic(), 0
    while True:
        got = await b.claim([q], 10)
        if got:
            break
        assert returns < 25, f"wait returned {returns} times before {what}: busy polling"
        assert time.monotonic() - start < 5.0, f"no wake-up for {what}"
        await b.wait([q], 10.0)
        returns += 1
    late = got[0].now - due
    assert late < 0.5, f"{what}: claimed {late:.2f}s after it came due"


async def check_wait_wakes_for_eta(factory: BrokerFactory) -> None:
    """wait returns when a scheduled task's eta comes due."""
    q = qname("wake-eta")
    async with opened(factory) as b:
        await declare(b, q)
        due = await b.now() + 0.5

        async def setup() -> None:
            await b.enqueue([new_task(q, eta=due)])

        await _wakes_when_due(b, q, due, "a scheduled eta", setup)


async def check_wait_wakes_for_lease_expiry(factory: BrokerFactory) -> None:
    """wait returns when a leased task's lease expires (its worker died)."""
    q = qname("wake-lease")
    async with opened_many(factory, 2) as (b, dead_worker):
        await declare(b, q, lease=0.5)
        await b.enqueue([new_task(q)])
        [c] = await dead_worker.claim([q], 1)

        async def setup() -> None:
            pass

        await _wakes_when_due(b, q, c.lease_until, "a lease expiry", setup)


async def check_wait_wakes_for_rate_token(factory: BrokerFactory) -> None:
    """wait returns when the rate limit's next token comes due."""
    q = qname("wake-rate")
    async with opened(factory) as b:
        await declare(b, q, rate="2/s", bucket_size=1)
        await b.enqueue([new_task(q), new_task(q)])
        [c] = await b.claim([q], 10)

        async def setup() -> None:
            pass

        await _wakes_when_due(b, q, c.now + 0.5, "the next rate-limit token", setup)


async def check_record_metrics(factory: BrokerFactory) -> None:
    """record adds counts and totals and keeps the max of maxes, across instances."""
    fa, fb = f"{qname('metrics')}.a", f"{qname('metrics')}.b"
    async with opened_many(factory, 2) as (a, b):
        await a.record([])
        await a.record(
            [TaskMetrics(fa, 2, 1, 1.5, 1.0, 0.5, 0.3, 1000)],
        )
        await b.record(
            [
                TaskMetrics(fa, 3, 0, 2.0, 0.8, 1.0, 0.6, 500),
                TaskMetrics(fb, 1, 1, 0.25, 0.25, 0.125, 0.125, 0),
            ]
        )
        for inst in (a, b):
            got = {m.task: m for m in await inst.metrics()}
            assert fa in got and fb in got, f"metrics() lacks {fa} or {fb}"
            m = got[fa]
            actual = (m.count, m.failures, m.wall_max, m.cpu_max, m.mem_peak_max)
            assert actual == (5, 1, 1.0, 0.6, 1000), (
                f"{fa}: (count, failures, wall_max, cpu_max, mem_peak_max) = {actual}, "
                "expected (5, 1, 1.0, 0.6, 1000)"
            )
            assert math.isclose(m.wall_total, 3.5) and math.isclose(m.cpu_total, 1.5), (
                f"{fa}: wall_total {m.wall_total} (expected 3.5), cpu_total {m.cpu_total} "
                "(expected 1.5)"
            )
            n = got[fb]
            assert (n.count, n.failures, n.wall_total, n.cpu_max) == (1, 1, 0.25, 0.125)
            assert isinstance(m.extra, dict)


async def check_now_close_to_time(factory: BrokerFactory) -> None:
    """now() is epoch seconds within a second of this host's clock, and advances."""
    async with opened_many(factory, 2) as (a, b):
        n1 = await a.now()
        assert isinstance(n1, float), f"now() returned {type(n1).__name__}, expected float"
        assert abs(n1 - time.time()) < 1.0, f"now() is {n1 - time.time():+.3f}s off time.time()"
        await asyncio.sleep(0.1)
        n2 = await b.now()
        assert 0.05 <= n2 - n1 < 1.0, f"now() advanced {n2 - n1:.3f}s over a 0.1s sleep"


async def check_close_reopen(factory: BrokerFactory) -> None:
    """open is idempotent; a closed instance opens again with its data; close twice is
    harmless."""
    q = qname("reopen")
    b = await make_broker(factory)
    await b.open()
    try:
        await b.open()
        t = new_task(q)
        await b.enqueue([t])
    finally:
        await b.close()
    await b.open()
    try:
        got = await b.claim([q], 10)
        assert [c.id for c in got] == [t.id], f"after close and open again, claimed {got}"
        await b.ack([got[0].lease])
    finally:
        await b.close()
    await b.close()


def _operations(q: str) -> dict[str, Callable[[Broker], Coroutine[Any, Any, Any]]]:
    lease = Lease(q, "x", "y")
    return {
        "declare": lambda b: b.declare([QueuePolicy(q)]),
        "enqueue": lambda b: b.enqueue([new_task(q)]),
        "claim": lambda b: b.claim([q], 1),
        "ack": lambda b: b.ack([lease]),
        "retry": lambda b: b.retry(lease, 0.0, "E"),
        "release": lambda b: b.release([lease]),
        "dead_letter": lambda b: b.dead_letter(lease, "E", "tb"),
        "extend": lambda b: b.extend([lease]),
        "wait": lambda b: b.wait([q], 0.05),
        "stats": lambda b: b.stats(q),
        "dead_letters": lambda b: b.dead_letters(q),
        "requeue_dead": lambda b: b.requeue_dead(q),
        "set_paused": lambda b: b.set_paused(q, True),
        "purge": lambda b: b.purge(q),
        "delete": lambda b: b.delete(q, id="x"),
        "record": lambda b: b.record([TaskMetrics("x")]),
        "metrics": lambda b: b.metrics(),
        "now": lambda b: b.now(),
    }


async def check_closed_broker_raises(factory: BrokerFactory) -> None:
    """Every operation on a never-opened or closed broker raises an OffloadError that
    says so (not AttributeError, not a driver's error)."""
    q = qname("closed")
    problems = []
    b = await make_broker(factory)
    for when in ("never opened", "closed"):
        if when == "closed":
            await b.open()
            await b.close()
        for name, op in _operations(q).items():
            try:
                await asyncio.wait_for(op(b), 5.0)
            except OffloadError as exc:
                if not str(exc):
                    problems.append(f"{name} ({when}): {type(exc).__name__} without a message")
            except Exception as exc:
                problems.append(f"{name} ({when}): raised {type(exc).__name__}: {exc}")
            else:
                problems.append(f"{name} ({when}): did not raise")
    assert not problems, "operations on a broker that is not open:\n  " + "\n  ".join(problems)


def _drive(coro: Coroutine[Any, Any, Any], what: str) -> Any:
    """Run a coroutine that must never suspend, without an event loop."""
    try:
        coro.send(None)
    except StopIteration as stop:
        return stop.value
    coro.close()
    raise AssertionError(f"{what} suspended although capabilities.inline is True")


def _inline_session(b: Broker, q: str) -> None:
    d = _drive
    d(b.open(), "open")
    try:
        d(b.declare([QueuePolicy(q, lease=30.0)]), "declare")
        assert d(b.enqueue([new_task(q), new_task(q), new_task(q)]), "enqueue") == [True] * 3
        got = d(b.claim([q], 3), "claim")
        assert len(got) == 3, f"inline claim gave {len(got)} of 3"
        extended = d(b.extend([c.lease for c in got]), "extend")
        assert same_leases(extended, [30.0] * 3), f"inline extend returned {extended}"
        assert d(b.retry(got[0].lease, 0.0, "E"), "retry") is True
        d(b.release([got[1].lease]), "release")
        assert d(b.dead_letter(got[2].lease, "E", "tb"), "dead_letter") is True
        again = d(b.claim([q], 3), "claim")
        d(b.ack([again[0].lease]), "ack")
        d(b.stats(q), "stats")
        d(b.dead_letters(q), "dead_letters")
        d(b.requeue_dead(q), "requeue_dead")
        d(b.set_paused(q, False), "set_paused")
        d(b.purge(q), "purge")
        d(b.delete(q, id="x"), "delete")
        d(b.record([TaskMetrics(f"{q}.fn", 1)]), "record")
        d(b.metrics(), "metrics")
        d(b.now(), "now")
    finally:
        d(b.close(), "close")


async def check_inline_never_suspends(factory: BrokerFactory) -> None:
    """A broker declaring ``capabilities.inline`` runs every method except wait to
    completion without suspending, in a thread with no event loop."""
    b = await make_broker(factory)
    if not b.capabilities.inline:
        return
    await asyncio.to_thread(_inline_session, b, qname("inline"))
