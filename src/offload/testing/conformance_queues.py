"""Conformance checks: named tasks, pause, purge, delete, stats and declare.
See :mod:`offload.testing.conformance`."""

from __future__ import annotations

from ..brokers.base import Broker
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
    scaled_attempts,
    sleep_until,
)


async def check_named_dedup_while_exists(factory: BrokerFactory) -> None:
    """A name is taken while its task is ready, scheduled, leased or dead, and (within the
    dedup window) after ack, delete or purge; a refused duplicate changes nothing."""
    q = qname("dedup")
    async with opened(factory) as b:
        await declare(b, q, lease=30.0, dedup_window=60.0)

        async def dup(name: str, state: str) -> None:
            t = new_task(q, b"duplicate", name=name)
            assert await b.enqueue([t]) == [False], (
                f"a second task named {name!r} was accepted while the first is {state}"
            )
            assert await b.delete(q, id=t.id) is False, "a refused duplicate was stored"

        first = new_task(q, b"original", name="n-ready")
        assert await b.enqueue([first]) == [True]
        await dup("n-ready", "ready")
        assert await b.enqueue([new_task(q, name="n-sched", delay=60)]) == [True]
        await dup("n-sched", "scheduled")
        [c] = await b.claim([q], 10)
        assert (c.id, c.payload) == (first.id, b"original"), f"claimed {c}"
        await dup("n-ready", "leased")
        assert await b.dead_letter(c.lease, "E", "tb") is True
        await dup("n-ready", "dead")
        assert await b.requeue_dead(q) == 1
        await dup("n-ready", "requeued")
        [c] = await b.claim([q], 10)
        await b.ack([c.lease])
        await dup("n-ready", "acked (within the dedup window)")
        assert await b.enqueue([new_task(q, name="n-del")]) == [True]
        assert await b.delete(q, name="n-del") is True
        await dup("n-del", "deleted (within the dedup window)")
        assert await b.enqueue([new_task(q, name="n-purge")]) == [True]
        assert await b.purge(q) == 2
        await dup("n-purge", "purged (within the dedup window)")
        await dup("n-sched", "purged (within the dedup window)")
        s = await b.stats(q)
        assert (s.ready, s.scheduled, s.leased, s.dead) == (0, 0, 0, 0), f"stats {s}"


async def check_named_dedup_window(factory: BrokerFactory) -> None:
    """A removed task's name is free again once the queue's dedup window has passed."""

    async def attempt(k: float) -> None:
        q, window = qname("window"), 0.5 * k
        async with opened(factory) as b:
            await declare(b, q, dedup_window=window)
            names = ["w-ack", "w-delete", "w-purge"]
            start = await b.now()
            await b.enqueue([new_task(q, name="w-ack")])
            [c] = await b.claim([q], 1)
            await b.ack([c.lease])
            await b.enqueue([new_task(q, name="w-delete")])
            assert await b.delete(q, name="w-delete") is True
            await b.enqueue([new_task(q, name="w-purge")])
            assert await b.purge(q) == 1
            removed = await b.now()
            early = await b.enqueue([new_task(q, name=n) for n in names])
            require_live(await b.now(), start + window, "the dedup window passed")
            assert early == [False] * 3, (
                f"names {names} re-enqueued within the dedup window: {early}"
            )
            await sleep_until(b, removed + window + 0.1)
            late = await b.enqueue([new_task(q, name=n) for n in names])
            assert late == [True] * 3, f"after the dedup window, re-enqueueing {names} gave {late}"
            assert await b.enqueue([new_task(q, name=n) for n in names]) == [False] * 3

    await scaled_attempts(attempt, "that a name is kept for its dedup window")


async def check_named_batch_reports_duplicates(factory: BrokerFactory) -> None:
    """A batch enqueue reports each duplicate (also a repeat inside the batch) and still
    creates the others."""
    q = qname("batch")
    async with opened(factory) as b:
        await declare(b, q)
        old = new_task(q, name="b-1")
        assert await b.enqueue([old]) == [True]
        batch = [
            new_task(q),
            new_task(q, name="b-1"),
            new_task(q, name="b-2"),
            new_task(q, name="b-2"),
            new_task(q, name="b-3"),
        ]
        result = await b.enqueue(batch)
        assert result == [True, False, True, False, True], (
            f"batch [new, dup of stored, new b-2, b-2 again, new] returned {result}"
        )
        s = await b.stats(q)
        assert s.ready == 4, f"stats.ready {s.ready}, expected 4"
        got = await b.claim([q], 10)
        assert sorted(c.id for c in got) == sorted([old.id, batch[0].id, batch[2].id, batch[4].id])


async def check_names_per_queue(factory: BrokerFactory) -> None:
    """Names are unique per queue: the same name in two queues is two tasks."""
    q1, q2 = qname("names-1"), qname("names-2")
    async with opened(factory) as b:
        await b.enqueue([])
        assert await b.enqueue([new_task(q1, name="same")]) == [True]
        assert await b.enqueue([new_task(q2, name="same")]) == [True], "name shared by queues"
        assert await b.enqueue([new_task(q1, name="same"), new_task(q2, name="same")]) == [
            False,
            False,
        ]
        assert await b.delete(q1, name="same") is True
        assert (await b.stats(q2)).ready == 1, "deleting in one queue removed the other's"
        assert await b.delete(q2, name="same") is True


async def check_pause_resume(factory: BrokerFactory) -> None:
    """A paused queue (seen by every instance) yields no claims, still accepts tasks and
    counts them; resuming restores claims."""
    q1, q2 = qname("pause"), qname("pause-other")
    async with opened_many(factory, 2) as (a, b):
        await declare(a, q1)
        await declare(a, q2)
        await a.enqueue([new_task(q1), new_task(q1), new_task(q2)])
        await a.set_paused(q1, True)
        await a.set_paused(q1, True)  # idempotent
        assert await a.enqueue([new_task(q1)]) == [True], "enqueue to a paused queue"
        s = await b.stats(q1)
        assert s.paused is True and s.ready == 3, f"paused queue stats {s}"
        assert await b.claim([q1], 10) == [], "claimed from a paused queue"
        got = await b.claim([q1, q2], 10)
        assert [c.queue for c in got] == [q2], f"claim over paused + active gave {got}"
        async with opened(factory) as c:
            assert (await c.stats(q1)).paused is True, "pause is not stored in the broker"
        await b.set_paused(q1, False)
        assert (await a.stats(q1)).paused is False
        got = await a.claim([q1], 10)
        assert len(got) == 3, f"after resume claimed {len(got)} of 3"


async def check_purge(factory: BrokerFactory) -> None:
    """purge deletes ready and scheduled tasks of its queue only; leased and dead stay."""
    q, other = qname("purge"), qname("purge-other")
    async with opened(factory) as b:
        await declare(b, q, lease=30.0)
        await b.enqueue([new_task(q), new_task(q), new_task(q)])
        leased = await b.claim([q], 3)
        assert await b.dead_letter(leased[2].lease, "E", "tb") is True
        await b.enqueue([new_task(q) for _ in range(3)] + [new_task(q, delay=60)])
        await b.enqueue([new_task(q, eta=(await b.now()) + 60)])
        await b.enqueue([new_task(other), new_task(other)])
        assert await b.purge(q) == 5, "purge must count 3 ready + 2 scheduled"
        s = await b.stats(q)
        assert (s.ready, s.scheduled, s.leased, s.dead) == (0, 0, 2, 1), f"after purge: {s}"
        assert (await b.stats(other)).ready == 2, "purge touched another queue"
        await b.ack([leased[0].lease])
        assert await b.retry(leased[1].lease, 0.0, "E") is True, "purge broke a lease"
        assert (await b.stats(q)).ready == 1
        assert await b.purge(q) == 1
        assert await b.purge(q) == 0
        assert (await b.stats(q)).dead == 1


async def check_delete_any_state(factory: BrokerFactory) -> None:
    """delete by id or by name removes a ready, scheduled, leased or dead task once; a
    deleted leased task's lease is lost."""
    q, other = qname("delete"), qname("delete-other")
    async with opened(factory) as b:
        await declare(b, q, lease=30.0)
        lease_t = [new_task(q, name=f"d-leased-{i}") for i in range(2)]
        dead_t = [new_task(q, name=f"d-dead-{i}") for i in range(2)]
        await b.enqueue(lease_t + dead_t)
        got = {c.id: c for c in await b.claim([q], 4)}
        assert len(got) == 4
        for t in dead_t:
            assert await b.dead_letter(got[t.id].lease, "E", "tb") is True
        ready_t = [new_task(q, name=f"d-ready-{i}") for i in range(2)]
        sched_t = [new_task(q, name=f"d-sched-{i}", delay=60) for i in range(2)]
        await b.enqueue(ready_t + sched_t)
        s = await b.stats(q)
        assert (s.ready, s.scheduled, s.leased, s.dead) == (2, 2, 2, 2), f"stats {s}"
        assert await b.delete(other, id=ready_t[0].id) is False, "deleted via another queue"
        assert await b.delete(other, name="d-ready-0") is False, "deleted via another queue"
        for state, (by_id, by_name) in {
            "ready": ready_t,
            "scheduled": sched_t,
            "leased": lease_t,
            "dead": dead_t,
        }.items():
            assert await b.delete(q, id=by_id.id) is True, f"delete(id=) of a {state} task"
            assert await b.delete(q, id=by_id.id) is False, f"deleted a {state} task twice"
            assert await b.delete(q, name=by_name.name) is True, f"delete(name=) of {state}"
            assert await b.delete(q, name=by_name.name) is False, f"deleted {state} twice"
        s = await b.stats(q)
        assert (s.ready, s.scheduled, s.leased, s.dead) == (0, 0, 0, 0), f"after delete: {s}"
        assert await b.dead_letters(q) == []
        lost = got[lease_t[0].id].lease
        assert await b.extend([lost]) == [None], "extend of a deleted task"
        assert await b.retry(lost, 0.0, "E") is False, "retry of a deleted task"
        assert await b.dead_letter(lost, "E", "tb") is False, "dead_letter of a deleted task"
        await b.ack([lost])
        await b.release([lost])
        assert await b.claim([q], 10) == [], "a deleted task came back"
        assert await b.delete(q, id="no-such-id") is False
        assert await b.delete(q, name="no-such-name") is False


async def check_stats_exact(factory: BrokerFactory) -> None:
    """stats counts ready (due, plus expired leases), scheduled, leased, dead and paused."""

    async def attempt(k: float) -> None:
        q = qname("stats")
        async with opened(factory) as b:
            await _stats_exact(b, q, k)

    await scaled_attempts(attempt, "exact stats while leases hold")


async def _stats_exact(b: Broker, q: str, k: float) -> None:
    empty = await b.stats(q)
    assert (empty.queue, empty.ready, empty.scheduled, empty.leased, empty.dead) == (
        q,
        0,
        0,
        0,
        0,
    ), f"stats of an unused queue: {empty}"
    assert empty.paused is False
    await declare(b, q, lease=1.0 * k)
    await b.enqueue([new_task(q)])
    [expired] = await b.claim([q], 1)
    await b.enqueue([new_task(q) for _ in range(6)])
    await sleep_until(b, expired.lease_until + 0.05)
    fresh = await b.claim([q], 3)
    assert expired.id not in [c.id for c in fresh], "a newer eta was passed over"
    assert await b.dead_letter(fresh[2].lease, "E", "tb") is True
    await b.enqueue([new_task(q, delay=60), new_task(q, delay=60)])
    s = await b.stats(q)
    now = await b.now()
    assert (s.queue, s.scheduled, s.dead, s.paused) == (q, 2, 1, False), f"stats {s}"
    require_live(now, min(c.lease_until for c in fresh), "the fresh leases ran out")
    assert (s.ready, s.leased) == (4, 2), (
        f"stats {s}: expected ready 4 (3 due + 1 expired lease) and leased 2"
    )
    await b.set_paused(q, True)
    p = await b.stats(q)
    assert p.paused is True and (p.scheduled, p.dead) == (2, 1), f"paused stats {p}"


async def check_declare_idempotent_updates(factory: BrokerFactory) -> None:
    """declare is an idempotent upsert: a new policy (from any instance) rules the next
    claim, and re-declaring keeps the token bucket's state."""
    q, r = qname("declare"), qname("declare-rate")
    async with opened_many(factory, 2) as (a, b):
        await declare(a, q, max_concurrent=1, lease=30.0)
        await declare(a, q, max_concurrent=1, lease=30.0)
        await a.declare([])
        await a.enqueue([new_task(q) for _ in range(4)])
        assert len(await a.claim([q], 10)) == 1, "max_concurrent=1 not enforced"
        await declare(b, q, max_concurrent=3, lease=0.5)
        more = await a.claim([q], 10)
        assert len(more) == 2, f"after raising max_concurrent to 3, claimed {len(more)} more"
        for c in more:
            assert abs(c.lease_until - c.now - 0.5) < 0.05, (
                f"the re-declared lease 0.5 was not used: lease {c.lease_until - c.now:.3f}s"
            )
        await declare(a, r, rate=1.0, bucket_size=3)
        await a.enqueue([new_task(r) for _ in range(6)])
        first = await a.claim([r], 10)
        assert len(first) == 3, f"full bucket of 3 gave {len(first)}"
        await declare(b, r, rate=1.0, bucket_size=3)
        again = await a.claim([r], 10)
        elapsed = (await a.now()) - first[0].now
        assert len(again) <= int(elapsed * 1.0 + EPS), (
            f"re-declaring refilled the token bucket: {len(again)} claimed {elapsed:.2f}s "
            "after it was emptied at 1/s"
        )


async def check_undeclared_queue_defaults(factory: BrokerFactory) -> None:
    """A queue never declared works with QueuePolicy defaults (60 s lease, no limits)."""
    q = qname("undeclared")
    async with opened(factory) as b:
        s = await b.stats(q)
        assert (s.ready, s.scheduled, s.leased, s.dead, s.paused) == (0, 0, 0, 0, False)
        assert (
            await b.enqueue([new_task(q, name="u")] + [new_task(q) for _ in range(4)]) == [True] * 5
        )
        got = await claim_until(b, [q], 5)
        assert len(got) == 5, f"claimed {len(got)} of 5 from an undeclared queue"
        for c in got:
            assert abs(c.lease_until - c.now - 60.0) < 0.5, (
                f"default lease should be 60s, got {c.lease_until - c.now:.2f}s"
            )
        await b.ack([c.lease for c in got])
        assert await b.enqueue([new_task(q, name="u")]) == [False], (
            "the default dedup window (1 h) did not keep the name"
        )
