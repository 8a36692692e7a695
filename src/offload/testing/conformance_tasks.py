"""Conformance checks: one task's life cycle (enqueue, claim, lease, ack, retry, release,
dead letters). See :mod:`offload.testing.conformance`."""

from __future__ import annotations

import asyncio
import os

from ..brokers.base import Broker, Capabilities, Lease
from .conformance_support import (
    EPS,
    BrokerFactory,
    claim_until,
    declare,
    new_task,
    opened,
    opened_many,
    qname,
    require_live,
    same_leases,
    scaled_attempts,
    sleep_until,
)


async def check_protocol_shape(factory: BrokerFactory) -> None:
    """The broker implements the protocol's methods and declares its capabilities."""
    async with opened(factory) as b:
        assert isinstance(b, Broker), f"{type(b).__name__} lacks methods of offload's Broker"
        assert isinstance(b.url, str) and "://" in b.url, f"broker.url {b.url!r} is not a URL"
        assert isinstance(b.capabilities, Capabilities), (
            f"broker.capabilities is {b.capabilities!r}, expected a Capabilities"
        )
        assert await b.enqueue([]) == [], "enqueue([]) must return []"


async def check_enqueue_durable(factory: BrokerFactory) -> None:
    """A task enqueued (ready or scheduled) is there for a new broker instance after close."""
    q = qname("durable")
    async with opened(factory) as a:
        await declare(a, q)
        ready, later = new_task(q, name="durable-1"), new_task(q, delay=60)
        assert await a.enqueue([ready, later]) == [True, True]
    async with opened(factory) as b:
        s = await b.stats(q)
        assert (s.ready, s.scheduled) == (1, 1), f"after reopening, stats are {s}"
        got = await b.claim([q], 10)
        assert [c.id for c in got] == [ready.id], f"after reopening, claimed {got}"
        assert got[0].payload == ready.payload and got[0].name == "durable-1"


async def check_payload_bytes_unchanged(factory: BrokerFactory) -> None:
    """Payloads are opaque bytes: NUL, invalid UTF-8, empty and large come back unchanged."""
    q = qname("payload")
    payloads = [
        b"",
        b"\x00",
        b"\x00\x00abc\x00",
        bytes(range(256)),
        b"\xc3\x28\xa0\xa1 not utf-8 \xe2\x28\xa1\xff\xfe",
        "h\u00e9llo \u2713 \U0001f600".encode(),
        b"\x80\x04\x95 looks like a pickle.",
        b'{"json": "is not parsed"}',
        b"\r\n\t trailing space ",
        os.urandom(256 * 1024),
    ]
    async with opened(factory) as b:
        tasks = [new_task(q, p) for p in payloads]
        assert await b.enqueue(tasks) == [True] * len(tasks)
        got = await claim_until(b, [q], len(tasks))
        by_id = {c.id: c.payload for c in got}
        for t in tasks:
            assert t.id in by_id, f"task with payload {t.payload[:40]!r} was not claimed"
            p = by_id[t.id]
            assert type(p) is bytes, f"payload came back as {type(p).__name__}, not bytes"
            assert p == t.payload, (
                f"payload changed: sent {t.payload[:40]!r} ({len(t.payload)} bytes), "
                f"got {p[:40]!r} ({len(p)} bytes)"
            )
        big = next(c for c in got if c.id == tasks[-1].id)
        assert await b.dead_letter(big.lease, "E", "tb") is True
        [dl] = await b.dead_letters(q)
        assert type(dl.payload) is bytes and dl.payload == payloads[-1], (
            "a dead letter's payload differs from the payload sent"
        )


async def check_claim_fields(factory: BrokerFactory) -> None:
    """Claimed carries id, queue, name, payload, attempt 1, times and a lease on the clock."""
    q = qname("fields")
    async with opened(factory) as b:
        await declare(b, q, lease=5.0)
        named, plain = new_task(q, b"n", name="fields-1"), new_task(q, b"p")
        before = await b.now()
        assert await b.enqueue([named]) == [True]
        assert await b.enqueue([plain]) == [True]
        after = await b.now()
        got = {x.id: x for x in await b.claim([q], 10)}
        assert set(got) == {named.id, plain.id}, f"claimed {got}"
        c, d = got[named.id], got[plain.id]
        got = [c, d]
        assert (c.queue, c.name, c.payload) == (q, "fields-1", b"n"), f"claimed {c}"
        assert (d.queue, d.name, d.payload) == (q, None, b"p"), f"claimed {d}"
        for x in got:
            assert x.attempt == 1, f"first claim has attempt {x.attempt}, expected 1"
            assert before - EPS <= x.enqueued_at <= after + EPS, (
                f"enqueued_at {x.enqueued_at} is outside the enqueue call [{before}, {after}]"
            )
            assert x.now >= after - EPS, f"claim's now {x.now} is before enqueue ended {after}"
            assert abs(x.first_attempt_at - x.now) < EPS, (
                f"first claim: first_attempt_at {x.first_attempt_at} != now {x.now}"
            )
            assert abs(x.lease_until - (x.now + 5.0)) < 0.05, (
                f"lease_until {x.lease_until} != now {x.now} + the queue's lease 5.0"
            )
            assert isinstance(x.token, str) and x.token, f"token {x.token!r} must be a str"
        assert c.token != d.token, "two claims share a token"


async def check_fifo_by_eta(factory: BrokerFactory) -> None:
    """Claims come out oldest eta first, across enqueue calls and claim batches."""
    q = qname("fifo")
    async with opened(factory) as b:
        await declare(b, q)
        now = await b.now()
        past = [new_task(q, eta=now - d) for d in (10, 30, 20, 5, 25)]
        assert await b.enqueue(past) == [True] * 5
        fresh = []
        for _ in range(5):
            t = new_task(q)
            assert await b.enqueue([t]) == [True]
            fresh.append(t)
        # An explicit eta wins over delay.
        early = new_task(q, eta=now - 40, delay=60)
        assert await b.enqueue([early]) == [True]
        expected = [early.id] + [t.id for t in sorted(past, key=lambda t: t.eta)]
        expected += [t.id for t in fresh]
        # Each claim must take the oldest due tasks; the order *within* one claim's list is
        # not part of the contract (a worker starts them all at once).
        for i in range(6):
            got = {c.id for c in await b.claim([q], 2)}
            want = set(expected[2 * i : 2 * i + 2])
            assert got == want, (
                f"claim #{i + 1} of 2 did not take the oldest etas: expected {sorted(want)}, "
                f"got {sorted(got)} (order of all: {expected})"
            )


async def check_eta_not_claimable_before_due(factory: BrokerFactory) -> None:
    """A task with an eta or a delay is scheduled, not claimable, until the broker's clock
    reaches it; then it is claimable."""

    async def attempt(k: float) -> None:
        q, wait = qname("eta"), 0.5 * k
        async with opened(factory) as b:
            await declare(b, q)
            t0 = await b.now()
            by_eta, by_delay, now = new_task(q, eta=t0 + wait), new_task(q, delay=wait), new_task(q)
            assert await b.enqueue([by_eta, by_delay, now]) == [True] * 3
            due = {by_eta.id: t0 + wait, by_delay.id: t0 + wait, now.id: t0}
            first = await b.claim([q], 10)
            s = await b.stats(q)
            require_live(await b.now(), t0 + wait, "the eta came before claim and stats")
            early = [c.id for c in first if c.id != now.id]
            assert early == [], f"claimed {early} before their eta (only {now.id} was due)"
            assert (s.ready, s.scheduled, s.leased) == (0, 2, 1), f"stats {s}"
            got = first + await claim_until(b, [q], 3 - len(first), timeout=4.0 * k)
            assert sorted(c.id for c in got) == sorted(due), f"claimed {got}, expected all three"
            for c in got:
                assert c.now >= due[c.id] - EPS, (
                    f"task claimed at {c.now:.3f}, {due[c.id] - c.now:.3f}s before its eta"
                )

    await scaled_attempts(attempt, "that scheduled tasks wait for their eta")


async def check_claim_limit(factory: BrokerFactory) -> None:
    """claim returns exactly ``limit`` tasks when that many are due, never more."""
    q = qname("limit")
    async with opened(factory) as b:
        await declare(b, q)
        tasks = [new_task(q) for _ in range(10)]
        await b.enqueue(tasks)
        sizes = [len(await b.claim([q], n)) for n in (3, 4, 10, 10)]
        assert sizes == [3, 4, 3, 0], f"claims with limits 3, 4, 10, 10 returned {sizes}"
        assert len(await b.claim([q], 1)) == 0


async def check_lease_expiry_reclaims(factory: BrokerFactory) -> None:
    """An expired lease makes the task claimable again with attempt + 1 and a new token;
    first_attempt_at and enqueued_at stay."""
    q = qname("expiry")
    async with opened_many(factory, 2) as (a, b):
        await declare(a, q, lease=0.3)
        t = new_task(q)
        await a.enqueue([t])
        [c1] = await a.claim([q], 10)
        assert abs(c1.lease_until - (c1.now + 0.3)) < 0.05, f"lease_until {c1.lease_until}"
        for c in await b.claim([q], 10):
            assert c.now >= c1.lease_until - EPS, "claimed again while the lease held"
        await sleep_until(b, c1.lease_until + 0.05)
        s = await b.stats(q)
        assert (s.ready, s.leased) == (1, 0), f"an expired lease counts as ready; stats {s}"
        [c2] = await claim_until(b, [q], 1)
        assert c2.id == t.id and c2.attempt == 2, f"reclaimed {c2}, expected attempt 2"
        assert c2.token != c1.token, "a new claim must get a new token"
        assert abs(c2.first_attempt_at - c1.first_attempt_at) < EPS, (
            f"first_attempt_at changed from {c1.first_attempt_at} to {c2.first_attempt_at}"
        )
        assert abs(c2.enqueued_at - c1.enqueued_at) < EPS and c2.payload == t.payload
        await sleep_until(a, c2.lease_until + 0.05)
        [c3] = await claim_until(a, [q], 1)
        assert (c3.id, c3.attempt) == (t.id, 3), f"reclaimed {c3}, expected attempt 3"


async def check_extend(factory: BrokerFactory) -> None:
    """extend keeps a task leased past its original lease and returns the lease length it
    applied (the queue's stored lease); a lost lease reports None."""

    async def attempt(k: float) -> None:
        q, lease = qname("extend"), 1.0 * k
        async with opened_many(factory, 2) as (a, b):
            await declare(a, q, lease=lease)
            t = new_task(q)
            await a.enqueue([t])
            [c] = await a.claim([q], 1)
            await asyncio.sleep(lease / 2)
            before = await a.now()
            got = await a.extend([c.lease])
            assert same_leases(got, [lease]), (
                f"extend of a held lease returned {got}, expected [{lease}] (the queue's "
                "lease in seconds, a float)"
            )
            after = await a.now()
            await sleep_until(b, c.lease_until + 0.2 * k)
            early = await b.claim([q], 10)
            for x in early:
                assert x.now >= before + lease - EPS, (
                    f"claimed {x.now - c.lease_until:.2f}s after the original lease although "
                    "it was extended"
                )
            s = await b.stats(q)
            require_live(await b.now(), before + lease, "the extended lease ran out")
            assert s.leased == 1 and s.ready == 0, f"extended lease: stats {s}"
            await sleep_until(b, after + lease + 0.05)
            [c2] = await claim_until(b, [q], 1)
            assert c2.attempt == 2, f"reclaimed after the extended lease: attempt {c2.attempt}"
            assert await a.extend([c.lease]) == [None], (
                "extend after another worker claimed the task must be None for the old lease"
            )
            result = await a.extend([c.lease, c2.lease])
            assert same_leases(result, [None, lease]), (
                f"extend([old lease, new lease]) of one task returned {result}: each "
                "lease's own token decides"
            )
            await b.ack([c2.lease])
            assert await b.extend([c2.lease]) == [None], "extend after ack must be None"
            assert await b.extend([]) == []

    await scaled_attempts(attempt, "that extend keeps a lease")


async def check_stale_token_ignored(factory: BrokerFactory) -> None:
    """After another claim, the old lease's release is ignored and its retry, dead_letter
    and extend report False/None; the new holder is unaffected. (A stale *ack* wins: see
    check_late_ack_wins.)"""

    async def attempt(k: float) -> None:
        q = qname("stale")
        async with opened_many(factory, 2) as (a, b):
            await declare(a, q, lease=0.5 * k)
            t = new_task(q)
            await a.enqueue([t])
            [c1] = await a.claim([q], 1)
            await sleep_until(b, c1.lease_until + 0.05)
            await declare(b, q, lease=30.0)  # the new holder's lease outlasts the check
            [c2] = await claim_until(b, [q], 1)
            old = c1.lease
            assert await a.retry(old, 0.0, "stale") is False, "retry with a stale token"
            assert await a.dead_letter(old, "stale", "tb") is False, (
                "dead_letter with a stale token"
            )
            await a.release([old])
            await a.release([old], 0.0)
            assert await a.extend([old]) == [None], "extend with a stale token"
            bogus = Lease(q, t.id, "not-a-token")
            assert await a.retry(bogus, 0.0, "x") is False, "retry with a made-up token"
            assert await a.dead_letter(bogus, "x", "tb") is False, "dead_letter, made-up token"
            s = await b.stats(q)
            got = await a.claim([q], 10)
            require_live(await b.now(), c2.now + 30.0, "the new lease ran out")
            assert (s.leased, s.ready, s.scheduled, s.dead) == (1, 0, 0, 0), (
                f"stale retry/release/dead_letter changed the task: stats {s}"
            )
            assert got == [], f"claimed {got} while the new lease holds"
            await b.ack([c2.lease])
            s = await b.stats(q)
            assert (s.leased, s.ready) == (0, 0), f"ack by the new holder failed: {s}"

    await scaled_attempts(attempt, "that stale tokens are ignored")


async def check_ack_removes(factory: BrokerFactory) -> None:
    """ack removes the tasks it names (a batch) and nothing else; repeating it is harmless."""
    q = qname("ack")
    async with opened(factory) as b:
        await declare(b, q)
        tasks = [new_task(q, name="ack-1"), new_task(q), new_task(q)]
        await b.enqueue(tasks)
        got = await b.claim([q], 10)
        assert len(got) == 3
        await b.ack([got[0].lease, got[1].lease])
        s = await b.stats(q)
        assert (s.ready, s.leased) == (0, 1), f"after acking 2 of 3 leased: {s}"
        await b.ack([got[0].lease])  # again: ignored
        await b.ack([got[2].lease])
        s = await b.stats(q)
        assert (s.ready, s.scheduled, s.leased, s.dead) == (0, 0, 0, 0), f"after ack: {s}"
        assert await b.claim([q], 10) == []
        assert await b.delete(q, id=tasks[1].id) is False, "an acked task still exists"
        await b.ack([])


async def check_retry_reschedules(factory: BrokerFactory) -> None:
    """retry(delay) makes the task scheduled, not claimable before the delay, then claimable
    with attempt + 1 and the same first_attempt_at; the old token is spent."""

    async def attempt(k: float) -> None:
        q, delay = qname("retry"), 0.5 * k
        async with opened(factory) as b:
            await declare(b, q, lease=30.0)
            t = new_task(q)
            await b.enqueue([t])
            [c1] = await b.claim([q], 1)
            before = await b.now()
            assert await b.retry(c1.lease, delay, "ValueError: boom") is True
            s = await b.stats(q)
            early = await b.claim([q], 10)
            require_live(await b.now(), before + delay, "the retry delay passed")
            assert (s.scheduled, s.ready, s.leased) == (1, 0, 0), f"after retry({delay}): {s}"
            assert early == [], f"claimed {early} before the retry delay passed"
            assert await b.retry(c1.lease, 0.0, "again") is False, "retry twice with one token"
            assert await b.extend([c1.lease]) == [None], "extend after retry"
            got = await claim_until(b, [q], 1, timeout=4.0 * k)
            assert len(got) == 1, "a retried task never became claimable again"
            [c2] = got
            assert c2.now >= before + delay - EPS, f"claimed {before + delay - c2.now:.3f}s early"
            assert (c2.id, c2.attempt) == (t.id, 2), f"after one retry claimed {c2}"
            assert abs(c2.first_attempt_at - c1.first_attempt_at) < EPS, "first_attempt_at moved"
            assert await b.retry(c2.lease, 0.0, "now") is True
            [c3] = await claim_until(b, [q], 1)
            assert c3.attempt == 3, f"retry(0) then claim gave attempt {c3.attempt}"

    await scaled_attempts(attempt, "that a retry waits for its delay")


async def check_release_not_counted(factory: BrokerFactory) -> None:
    """release makes tasks claimable at once without counting the attempt."""

    async def attempt(k: float) -> None:
        q = qname("release")
        async with opened(factory) as b:
            await declare(b, q, lease=0.3 * k)
            t, u = new_task(q), new_task(q)
            await b.enqueue([t, u])
            c1 = await b.claim([q], 2)
            await b.release([x.lease for x in c1])
            c2 = await b.claim([q], 2)
            assert sorted(x.id for x in c2) == sorted([t.id, u.id]), f"after release: {c2}"
            for x in c2:
                assert x.attempt == 1, f"a released attempt was counted: attempt {x.attempt}"
                assert abs(x.first_attempt_at - x.now) < EPS, (
                    "release back to 0 attempts must reset first_attempt_at"
                )
            x = next(x for x in c2 if x.id == t.id)
            await sleep_until(b, max(c.lease_until for c in c2) + 0.05)
            c3 = await claim_until(b, [q], 2)
            y = next(c for c in c3 if c.id == t.id)
            assert y.attempt == 2
            await b.release([c.lease for c in c3])
            c4 = await claim_until(b, [q], 2)
            z = next(c for c in c4 if c.id == t.id)
            assert z.attempt == 2, f"release after attempt 2 gave attempt {z.attempt}"
            assert abs(z.first_attempt_at - x.first_attempt_at) < EPS, "first_attempt_at moved"
            await b.release([y.lease])  # stale: ignored
            got = await b.claim([q], 10)
            require_live(await b.now(), min(c.lease_until for c in c4), "the leases ran out")
            assert got == [], f"a stale release freed a task: {got}"

    await scaled_attempts(attempt, "that a stale release is ignored")


async def check_dead_letter(factory: BrokerFactory) -> None:
    """dead_letter stores error and traceback; dead tasks are never claimed (not even when
    their lease would have expired) and are listed oldest first."""

    async def attempt(k: float) -> None:
        q, other = qname("dead"), qname("dead-other")
        async with opened(factory) as b:
            await declare(b, q, lease=0.3 * k)
            tasks = [new_task(q), new_task(q, name="dead-b"), new_task(q)]
            for t in tasks:
                await b.enqueue([t])
            by_id = {c.id: c for c in await b.claim([q], 3)}
            assert set(by_id) == {t.id for t in tasks}
            got = [by_id[t.id] for t in tasks]
            t0 = await b.now()
            assert await b.dead_letter(got[0].lease, "ValueError: a", "Traceback a") is True
            assert await b.dead_letter(got[1].lease, "KeyError: b", "Traceback\n  b") is True
            t1 = await b.now()
            assert await b.dead_letter(got[0].lease, "again", "tb") is False, "buried twice"
            await sleep_until(b, got[2].lease_until + 0.05)
            again = await claim_until(b, [q], 1)
            again += await b.claim([q], 10)
            s = await b.stats(q)
            now = await b.now()
            if again:  # the same task claimed twice is a slow machine's, not a broker's fault
                require_live(now, again[0].lease_until, "the new lease ran out")
            assert [c.id for c in again] == [tasks[2].id], (
                f"after the leases expired, claimed {[c.id for c in again]}; only the live "
                f"task {tasks[2].id} may be claimed"
            )
            assert (s.dead, s.leased, s.ready) == (2, 1, 0), f"stats {s}"
            dls = await b.dead_letters(q)
            assert [d.id for d in dls] == [tasks[0].id, tasks[1].id], f"dead letters {dls}"
            d = dls[1]
            assert (d.queue, d.name, d.payload) == (q, "dead-b", tasks[1].payload)
            assert (d.error, d.traceback) == ("KeyError: b", "Traceback\n  b")
            assert d.attempts == 1, f"dead letter attempts {d.attempts}, expected 1"
            assert t0 - EPS <= d.failed_at <= t1 + EPS, (
                f"failed_at {d.failed_at} not in [{t0}, {t1}]"
            )
            assert dls[0].error == "ValueError: a" and dls[0].traceback == "Traceback a"
            assert [d.id for d in await b.dead_letters(q, limit=1)] == [tasks[0].id]
            assert await b.dead_letters(other) == []

    await scaled_attempts(attempt, "that dead tasks are never claimed")


async def check_requeue_dead(factory: BrokerFactory) -> None:
    """requeue_dead makes dead tasks ready now with fresh attempt counters."""
    q = qname("requeue")
    async with opened(factory) as b:
        await declare(b, q, lease=0.3)
        tasks = [new_task(q, name="rq-a"), new_task(q), new_task(q)]
        await b.enqueue(tasks)
        got = await b.claim([q], 3)
        await sleep_until(b, max(c.lease_until for c in got) + 0.05)
        got = await claim_until(b, [q], 3)
        assert sorted(c.attempt for c in got) == [2, 2, 2]
        for c in got:
            assert await b.dead_letter(c.lease, "E", "tb") is True
        assert await b.requeue_dead(q, [tasks[0].id, "no-such-id"]) == 1
        s = await b.stats(q)
        assert (s.dead, s.ready) == (2, 1), f"after requeueing one of three: {s}"
        [c] = await b.claim([q], 10)
        assert (c.id, c.name, c.attempt) == (tasks[0].id, "rq-a", 1), f"requeued: {c}"
        assert abs(c.first_attempt_at - c.now) < EPS, "requeue must reset first_attempt_at"
        assert await b.requeue_dead(q) == 2
        rest = await b.claim([q], 10)
        assert sorted(x.id for x in rest) == sorted(t.id for t in tasks[1:])
        assert [x.attempt for x in rest] == [1, 1]
        assert await b.requeue_dead(q) == 0
        assert await b.dead_letters(q) == []
