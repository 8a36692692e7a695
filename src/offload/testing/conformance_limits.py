"""Conformance checks: rate, max_concurrent, fairness across queues, volume and concurrent
claimers. See :mod:`offload.testing.conformance`."""

from __future__ import annotations

import asyncio
import math
from collections import Counter

from ..brokers.base import Broker, Claimed
from .conformance_support import (
    EPS,
    BrokerFactory,
    declare,
    new_task,
    opened,
    opened_many,
    qname,
    require_live,
    scaled_attempts,
    sleep_until,
)


async def check_token_bucket(factory: BrokerFactory) -> None:
    """rate 10/s with bucket 2, shared by every instance: a full bucket gives 2 at once,
    then no more than 10 per second (and not far fewer when claimed often)."""
    q = qname("rate")
    rate, cap, span = 10.0, 2, 1.2
    async with opened_many(factory, 2) as brokers:
        a = brokers[0]
        await declare(a, q, rate="10/s", bucket_size=cap)
        await a.enqueue([new_task(q) for _ in range(60)])
        first = await a.claim([q], 10)
        assert len(first) == cap, f"a full bucket of {cap} gave {len(first)} tasks at once"
        t0, total, i = first[0].now, cap, 0
        while True:
            b = brokers[i % 2]
            i += 1
            got = await b.claim([q], 10)
            now = got[0].now if got else await b.now()
            total += len(got)
            allowed = cap + math.floor(rate * (now - t0) + EPS)
            assert total <= allowed, (
                f"{total} tasks claimed {now - t0:.3f}s after the bucket of {cap} was emptied "
                f"at {rate:g}/s: at most {allowed} allowed"
            )
            if now >= t0 + span:
                break
            await asyncio.sleep(0.03)
        floor = cap + rate * (now - t0) * 0.5
        assert total >= floor, (
            f"only {total} tasks claimed in {now - t0:.2f}s at {rate:g}/s "
            f"(expected at least {floor:.0f}); tokens are not refilled"
        )


async def check_token_bucket_idle_cap(factory: BrokerFactory) -> None:
    """An idle bucket refills up to its bucket_size and no further: after idling several
    times as long as a refill takes, one claim with a large limit gets exactly
    bucket_size tasks."""
    q = qname("rate-idle")
    rate, cap = 20.0, 3
    async with opened(factory) as b:
        await declare(b, q, rate=rate, bucket_size=cap)
        await b.enqueue([new_task(q) for _ in range(50)])
        first = await b.claim([q], 100)
        assert len(first) == cap, f"a full bucket of {cap} gave {len(first)} tasks at once"
        idle = 4 * cap / rate  # a bucket without its cap would hold 4 * cap tokens by then
        await sleep_until(b, first[0].now + idle)
        got = await b.claim([q], 100)
        waited = (got[0].now if got else await b.now()) - first[0].now
        assert len(got) == cap, (
            f"after the bucket of {cap} (rate {rate:g}/s, so full again after "
            f"{cap / rate:.2f}s) sat idle for {waited:.2f}s, one claim with limit 100 took "
            f"{len(got)} tasks, expected exactly {cap}: the bucket must not fill beyond "
            "bucket_size"
        )


async def _gather_claims(brokers: list[Broker], q: str, limit: int) -> list[Claimed]:
    results = await asyncio.gather(*(b.claim([q], limit) for b in brokers))
    return [c for r in results for c in r]


async def check_max_concurrent(factory: BrokerFactory) -> None:
    """max_concurrent is never exceeded by concurrent claimers on separate instances; a
    slot frees on ack, release, retry, dead_letter and lease expiry."""

    async def attempt(k: float) -> None:
        q, cap = qname("maxconc"), 3
        async with opened_many(factory, 4) as brokers:
            a, claimers = brokers[0], brokers[1:]
            await declare(a, q, max_concurrent=cap, lease=1.5 * k)
            await a.enqueue([new_task(q) for _ in range(30)])

            async def top_up(expect_free: int, step: str, held: list[Claimed]) -> list[Claimed]:
                # Counts are exact only while the held leases last (a stalled machine may let
                # them expire, freeing slots legitimately: then the check runs again with
                # longer leases); the cap itself always holds.
                until = min((c.lease_until for c in held), default=math.inf)
                got = await _gather_claims(claimers, q, 5)
                racing = len(got)
                got += await a.claim([q], 5)
                s = await a.stats(q)
                assert s.leased <= cap, f"{step}: {s.leased} leased with max_concurrent={cap}"
                require_live(await a.now(), until, f"{step}: the held leases ran out")
                assert racing <= expect_free, (
                    f"{step}: concurrent claimers took {racing} with {expect_free} of "
                    f"max_concurrent={cap} free"
                )
                assert len(got) == expect_free, (
                    f"{step}: {len(got)} claimed in total, expected exactly {expect_free}"
                )
                return got

            held = await top_up(cap, "start", [])
            held += await top_up(0, "saturated", held)
            await a.ack([held[0].lease])
            held = held[1:]
            held += await top_up(1, "after ack", held)
            await a.release([held[0].lease])
            held = held[1:]
            held += await top_up(1, "after release", held)
            assert await a.retry(held[0].lease, 30.0, "E") is True
            held = held[1:]
            held += await top_up(1, "after retry", held)
            assert await a.dead_letter(held[0].lease, "E", "tb") is True
            held = held[1:]
            held += await top_up(1, "after dead_letter", held)
            await sleep_until(a, max(c.lease_until for c in held) + 0.05)
            s = await a.stats(q)
            assert s.leased == 0, f"after the leases expired, stats.leased is {s.leased}"
            await top_up(cap, "after lease expiry", [])

    await scaled_attempts(attempt, "exact max_concurrent counts while leases hold")


async def check_fair_across_queues(factory: BrokerFactory) -> None:
    """One claim over several queues spreads its limit so no queue starves, fills the
    limit from the queues that have tasks, and marks each task with its own queue."""
    qs = [qname("fair-a"), qname("fair-b"), qname("fair-c")]
    async with opened_many(factory, 1) as (b,):
        for q in qs:
            await declare(b, q)
            await b.enqueue([new_task(q) for _ in range(20)])  # fair-a holds the oldest
        for order in (qs, qs[::-1]):
            got = await b.claim(order, 6)
            per = Counter(c.queue for c in got)
            assert len(got) == 6 and all(per[q] >= 1 for q in qs), (
                f"claim({order}, 6) over three full queues took {dict(per)}; every queue "
                "must get a share"
            )
            await b.ack([c.lease for c in got])
        # One task per claim, the first queue refilled after every claim: the others must
        # still be served.
        seen: Counter[str] = Counter()
        for _ in range(45):
            [c] = await b.claim(qs, 1)
            seen[c.queue] += 1
            await b.ack([c.lease])
            await b.enqueue([new_task(qs[0])])
        assert all(seen[q] >= 1 for q in qs), f"claims of 1 with {qs[0]} refilled: {dict(seen)}"
        # Empty queues do not waste the limit.
        lone, empty = qname("fair-lone"), qname("fair-empty")
        await b.enqueue([new_task(lone) for _ in range(10)])
        got = await b.claim([empty, lone], 5)
        assert len(got) == 5 and {c.queue for c in got} == {lone}, (
            f"claim([empty, lone], 5) with 10 due in lone gave {len(got)}"
        )
        # Fewer slots than queues: a claim finds the one queue with work, whatever the
        # rotation asks first (a worker with 2 slots on 8 queues must never see "nothing
        # to do" while one of them holds tasks).
        many = [qname(f"fair-few-{i}") for i in range(8)]
        await b.enqueue([new_task(many[5]) for _ in range(40)])
        for limit in (1, 2, 1, 2, 1, 2, 1, 2, 1, 2, 1, 2, 1, 2, 1, 2):
            got = await b.claim(many, limit)
            assert len(got) == limit and {c.queue for c in got} == {many[5]}, (
                f"claim(8 queues, {limit}) with 40 due in one of them gave {len(got)}"
            )
            await b.ack([c.lease for c in got])


async def check_backlog_batches(factory: BrokerFactory) -> None:
    """A backlog of 5,000 tasks drains in batches: every task claimed exactly once."""
    q, n = qname("backlog"), 5000
    async with opened_many(factory, 2) as brokers:
        a = brokers[0]
        await declare(a, q, lease=120.0)
        ids = []
        for start in range(0, n, 500):
            batch = [new_task(q, f"{start + i}".encode()) for i in range(500)]
            assert await a.enqueue(batch) == [True] * 500
            ids += [t.id for t in batch]
        assert (await a.stats(q)).ready == n
        claimed: Counter[str] = Counter()
        for i in range(2 * n // 100):
            b = brokers[i % 2]
            got = await b.claim([q], 100)
            if not got:
                break
            assert len(got) <= 100
            claimed.update(c.id for c in got)
            await b.ack([c.lease for c in got])
        dups = [i for i, k in claimed.items() if k > 1]
        assert not dups, f"{len(dups)} tasks claimed twice, e.g. {dups[:3]}"
        lost = set(ids) - set(claimed)
        assert not lost, f"{len(lost)} of {n} tasks never claimed, e.g. {sorted(lost)[:3]}"
        assert len(claimed) == n
        s = await a.stats(q)
        assert (s.ready, s.scheduled, s.leased, s.dead) == (0, 0, 0, 0), f"after draining: {s}"


async def check_concurrent_claimers_no_duplicates(factory: BrokerFactory) -> None:
    """Three instances claiming in parallel loops never get the same task while its lease
    holds, and together get every task."""
    q, n = qname("parallel"), 300
    async with opened_many(factory, 3) as brokers:
        await declare(brokers[0], q, lease=60.0)
        tasks = [new_task(q) for _ in range(n)]
        await brokers[0].enqueue(tasks)
        claims: list[Claimed] = []

        async def worker(b: Broker) -> None:
            for i in range(n):
                got = await b.claim([q], 7)
                if not got:
                    return
                claims.extend(got)
                if i % 2:
                    await b.ack([c.lease for c in got])
                await asyncio.sleep(0)

        await asyncio.gather(*(worker(b) for b in brokers))
        claims += await brokers[0].claim([q], n)  # anything a worker gave up on early
        counts = Counter(c.id for c in claims)
        dups = {i: k for i, k in counts.items() if k > 1}
        assert not dups, f"{len(dups)} tasks handed to two claimers, e.g. {list(dups)[:3]}"
        assert set(counts) == {t.id for t in tasks}, (
            f"{n - len(counts)} of {n} tasks were never claimed"
        )
        assert all(c.attempt == 1 for c in claims)
