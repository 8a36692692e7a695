"""Conformance checks: the failure paths. Which claims follow an expired lease, what extend
and release(delay) do, late acks, enqueue by an existing id, the stored policy, argument
checks and requests the server refuses. See :mod:`offload.testing.conformance`."""

from __future__ import annotations

import asyncio
import math

from ..brokers.base import BlockingEnqueue, Broker, Claimed, EnforcedPolicy, Lease, NewTask
from ..errors import BrokerRefused, ConfigError
from .conformance_support import (
    EPS,
    BrokerFactory,
    claim_until,
    declare,
    make_broker,
    new_task,
    opened,
    opened_many,
    qname,
    require_live,
    same_leases,
    scaled_attempts,
    sleep_until,
)


def _expect_expired(c: Claimed, want: bool, what: str) -> None:
    assert c.expired is want, (
        f"{what}: Claimed.expired is {c.expired!r}, expected {want} (True only when the "
        "claim takes over a lease that expired)"
    )


async def _only(b: Broker, q: str, what: str, timeout: float = 3.0) -> Claimed:
    got = await claim_until(b, [q], 1, timeout=timeout)
    assert len(got) == 1, f"{what}: the task was not claimable"
    return got[0]


async def check_claim_expired_flag(factory: BrokerFactory) -> None:
    """Claimed.expired is True only when a claim takes over an expired lease; a claim after
    enqueue, retry (however many attempts), release or requeue_dead has it False."""
    q = qname("expired")
    async with opened_many(factory, 2) as (a, b):
        await declare(a, q, lease=30.0)
        t = new_task(q)
        await a.enqueue([t])
        c = await _only(a, q, "after enqueue")
        _expect_expired(c, False, "the first claim after enqueue")
        for i in range(12):  # more attempts than any retry limit a worker would allow
            assert await a.retry(c.lease, 0.0, "E") is True, f"retry #{i + 1}"
            c = await _only(a, q, f"after retry #{i + 1}")
            _expect_expired(c, False, f"a claim after retry(0) #{i + 1} (attempt {c.attempt})")
        assert await a.retry(c.lease, 0.2, "E") is True
        c = await _only(a, q, "after retry(0.2)")
        _expect_expired(c, False, f"a claim after retry(0.2) (attempt {c.attempt})")
        await a.release([c.lease])
        c = await _only(a, q, "after release")
        _expect_expired(c, False, "a claim after release")
        assert await a.dead_letter(c.lease, "E", "tb") is True
        assert await a.requeue_dead(q) == 1
        await declare(a, q, lease=0.3)
        c = await _only(a, q, "after requeue_dead")
        _expect_expired(c, False, "a claim after requeue_dead")
        await sleep_until(b, c.lease_until + 0.05)
        await declare(b, q, lease=30.0)
        d = await _only(b, q, "after the lease expired")
        assert (d.id, d.attempt) == (t.id, 2), f"reclaimed after expiry: {d}"
        _expect_expired(d, True, "a claim taking over an expired lease")
        assert await b.retry(d.lease, 0.0, "E") is True
        e = await _only(b, q, "after a retry of the taken-over task")
        _expect_expired(e, False, "a claim after a retry that followed an expiry")


def _check_claim_lease(c: Claimed, lease: float, now: float, what: str) -> None:
    assert isinstance(c.now, float) and abs(c.now - now) < 5.0, (
        f"{what}: Claimed.now is {c.now!r}, the broker clock read {now:.3f} (now must be "
        "filled with the broker clock at the claim)"
    )
    applied = c.lease_until - c.now
    assert abs(applied - lease) < 0.05, (
        f"{what}: lease_until - now is {applied:.3f}s, expected the queue's stored lease {lease}s"
    )


async def check_extend_returns_stored_lease(factory: BrokerFactory) -> None:
    """extend returns, per lease, the lease length it applied: the queue's lease as the last
    declare (by any instance) stored it, or None for a lease no longer held. Every claim
    path fills lease_until and now so that lease_until - now is that stored lease."""
    q, short, hand = qname("lease-len"), qname("lease-len-exp"), qname("lease-len-hand")
    async with opened_many(factory, 2) as (a, b):
        await declare(a, q, lease=5.0)
        await a.enqueue([new_task(q), new_task(q)])
        [c] = await a.claim([q], 1)
        _check_claim_lease(c, 5.0, await a.now(), "a claim")
        got = await a.extend([c.lease])
        assert same_leases(got, [5.0]), f"extend with the queue's lease 5.0 returned {got}"
        await declare(b, q, lease=7.5)  # a later deploy changed the lease
        got = await a.extend([c.lease])
        assert same_leases(got, [7.5]), (
            f"extend after another instance declared lease=7.5 returned {got}, expected "
            "[7.5]: extend applies the stored lease, not the one this instance declared"
        )
        [d] = await a.claim([q], 1)
        _check_claim_lease(d, 7.5, await a.now(), "a claim after the lease was re-declared")
        bogus = Lease(q, c.id, "not-a-token")
        got = await b.extend([c.lease, bogus, d.lease])
        assert same_leases(got, [7.5, None, 7.5]), (
            f"extend([held, made-up token, held]) returned {got}, expected [7.5, None, 7.5]"
        )
        await a.ack([c.lease])
        got = await a.extend([c.lease, d.lease])
        assert same_leases(got, [None, 7.5]), f"extend([acked, held]) returned {got}"
        # The claim that takes over an expired lease fills them the same way.
        await declare(a, short, lease=0.3)
        await a.enqueue([new_task(short)])
        [e] = await a.claim([short], 1)
        await sleep_until(b, e.lease_until + 0.05)
        [f] = await claim_until(b, [short], 1)
        _check_claim_lease(f, 0.3, await b.now(), "a claim of an expired lease")
        # A task enqueued while a worker waits (a broker with hand-off may lease it straight
        # to the waiter, which gets it from its next claim): the same fields, never expired.
        await declare(a, hand, lease=4.0)
        waiting = asyncio.ensure_future(b.wait([hand], 2.0))
        await asyncio.sleep(0.1)
        await a.enqueue([new_task(hand)])
        await waiting
        [h] = await claim_until(b, [hand], 1)
        # A hand-off may carry a shorter first lease (Redis: at most 3 s, so a task handed to
        # a worker that died parked is not stuck for a whole lease); lease_until - now is
        # still what was applied, and the first renewal applies the queue's stored lease.
        applied = h.lease_until - h.now
        assert 0.0 < applied <= 4.0 + 0.05, (
            f"a claim of a task enqueued during wait: lease_until - now is {applied:.3f}s, "
            "expected more than 0 and at most the queue's stored lease 4.0s"
        )
        got = await b.extend([h.lease])
        assert same_leases(got, [4.0]), f"extend of a handed-off task returned {got}"
        _expect_expired(h, False, "a claim of a task enqueued during wait")


def _zero(s: object) -> bool:
    return (s.ready, s.scheduled, s.leased, s.dead) == (0, 0, 0, 0)  # type: ignore[attr-defined]


async def check_late_ack_wins(factory: BrokerFactory) -> None:
    """A finished run wins: an ack from a worker whose lease expired removes the task even
    after another worker claimed it (whose extend, retry and dead_letter then find nothing)
    or while it is ready again; the name stays reserved and the max_concurrent slot frees."""
    q, lone = qname("late-ack"), qname("late-ack-ready")
    async with opened_many(factory, 2) as (a, b):
        await declare(a, q, lease=0.3, max_concurrent=1, dedup_window=60.0)
        t = new_task(q, name="late-1")
        await a.enqueue([t])
        [ca] = await a.claim([q], 1)
        await sleep_until(b, ca.lease_until + 0.05)
        await declare(b, q, lease=30.0, max_concurrent=1, dedup_window=60.0)
        cb = await _only(b, q, "after A's lease expired")
        assert cb.id == t.id and cb.attempt == 2, f"B claimed {cb}"
        await a.ack([ca.lease])  # A finished after all: its run wins
        s = await b.stats(q)
        assert _zero(s), (
            f"a late ack (A's lease expired, B holds the task) left the task: stats {s}; the "
            "ack must remove it whatever its state and token"
        )
        assert await b.extend([cb.lease]) == [None], "B's extend after A's late ack"
        assert await b.retry(cb.lease, 0.0, "E") is False, "B's retry after A's late ack"
        assert await b.dead_letter(cb.lease, "E", "tb") is False, "B's dead_letter after it"
        await b.ack([cb.lease])  # B finishing too: nothing left to remove
        s = await b.stats(q)
        assert _zero(s) and await b.claim([q], 10) == [], f"the task came back: stats {s}"
        assert await a.enqueue([new_task(q, name="late-1")]) == [False], (
            "after a late ack the name must stay reserved for the dedup window"
        )
        await a.enqueue([new_task(q)])
        got = await b.claim([q], 10)
        assert len(got) == 1, (
            f"max_concurrent=1: after the late ack removed B's task, claimed {len(got)}; the "
            "slot B held must be free"
        )
        await a.ack([Lease(q, "no-such-id", "no-token"), got[0].lease])  # unknown: ignored
        assert _zero(await a.stats(q))
        # Acked while ready again (its lease expired, nobody claimed it yet).
        await declare(a, lone, lease=0.3)
        await a.enqueue([new_task(lone)])
        [c] = await a.claim([lone], 1)
        await sleep_until(a, c.lease_until + 0.05)
        assert (await a.stats(lone)).ready == 1
        await a.ack([c.lease])
        s = await a.stats(lone)
        assert _zero(s), f"a late ack of a task whose lease expired left it: stats {s}"


async def check_late_ack_removes_dead_letter(factory: BrokerFactory) -> None:
    """A late ack removes the task even after another worker dead-lettered it (as "worker
    died"): it finished, so it is not dead."""
    q = qname("late-ack-dead")
    async with opened_many(factory, 2) as (a, b):
        await declare(a, q, lease=0.3)
        t = new_task(q, name="late-dead")
        await a.enqueue([t, new_task(q, delay=60)])
        [ca] = await a.claim([q], 1)
        await sleep_until(b, ca.lease_until + 0.05)
        await declare(b, q, lease=30.0)
        cb = await _only(b, q, "after A's lease expired")
        assert await b.dead_letter(cb.lease, "worker died", "") is True
        assert [d.id for d in await b.dead_letters(q)] == [t.id]
        await a.ack([ca.lease])
        s = await b.stats(q)
        assert (s.dead, s.leased, s.ready, s.scheduled) == (0, 0, 0, 1), (
            f"a late ack of a task another worker dead-lettered left stats {s}: the ack must "
            "remove it from the dead letters"
        )
        assert await b.dead_letters(q) == [], "the acked task is still a dead letter"
        assert await b.requeue_dead(q) == 0
        assert await a.enqueue([new_task(q, name="late-dead")]) == [False], (
            "after a late ack the name must stay reserved for the dedup window"
        )


async def check_release_delay(factory: BrokerFactory) -> None:
    """release(leases, delay) makes the tasks claimable after ``delay`` seconds on the
    broker's clock, attempt not counted, stale tokens ignored; a delay that is not a finite
    number >= 0 raises ConfigError."""

    async def attempt(k: float) -> None:
        q, delay = qname("release-delay"), 0.5 * k
        async with opened_many(factory, 2) as (a, b):
            await declare(a, q, lease=30.0)
            t, u = new_task(q), new_task(q)
            await a.enqueue([t, u])
            by_id = {c.id: c for c in await a.claim([q], 2)}
            before = await a.now()
            await a.release([by_id[t.id].lease], delay)
            await a.release([by_id[u.id].lease], 0.0)
            got = await b.claim([q], 10)
            s = await b.stats(q)
            require_live(await b.now(), before + delay, "the release delay passed")
            assert [c.id for c in got] == [u.id], (
                f"after release(delay={delay}) of one task and release(0.0) of another, "
                f"claimed {[c.id for c in got]}; only {u.id} may be claimable yet"
            )
            assert (s.scheduled, s.ready, s.leased) == (1, 0, 1), (
                f"after release(delay={delay}): stats {s}, expected 1 scheduled"
            )
            [c] = await claim_until(b, [q], 1, timeout=4.0 * k)
            assert c.id == t.id and c.now >= before + delay - EPS, (
                f"released with delay {delay}, claimed {before + delay - c.now:.3f}s early"
            )
            assert c.attempt == 1, f"a released attempt was counted: attempt {c.attempt}"
            _expect_expired(c, False, "a claim after release(delay)")
            await a.release([by_id[t.id].lease], 0.0)  # stale: ignored
            assert await b.claim([q], 10) == [], "a stale release freed the task"
            for bad in (-1.0, math.nan, math.inf, "1"):
                try:
                    await b.release([c.lease], bad)  # type: ignore[arg-type]
                except ConfigError:
                    pass
                except Exception as exc:
                    raise AssertionError(
                        f"release(delay={bad!r}) raised {type(exc).__name__}: {exc}; "
                        "expected ConfigError"
                    ) from exc
                else:
                    raise AssertionError(f"release(delay={bad!r}) was accepted")
            s = await b.stats(q)
            assert (s.leased, s.ready, s.scheduled) == (2, 0, 0), (
                f"a refused release changed the tasks: stats {s}"
            )

    await scaled_attempts(attempt, "that a released task waits for its delay")


def _same_id(t: NewTask, payload: bytes, name: str | None = None, delay: float = 0.0) -> NewTask:
    return NewTask(id=t.id, queue=t.queue, payload=payload, name=name, delay=delay)


async def check_enqueue_idempotent_by_id(factory: BrokerFactory) -> None:
    """Enqueueing an id that exists (ready, scheduled, leased or dead) reports True and
    changes nothing: no second task, no new name, no new payload; in a batch too, even one
    holding the same id twice, and in enqueue_blocking."""
    q = qname("idem")
    async with opened(factory) as b:
        await declare(b, q, lease=30.0)
        ready = new_task(q, b"ready", name="idem-ready")
        sched = new_task(q, b"sched", delay=60)
        leased, dead = new_task(q, b"leased"), new_task(q, b"dead")
        assert await b.enqueue([leased, dead]) == [True, True]
        held = {c.id: c for c in await b.claim([q], 2)}
        assert await b.dead_letter(held[dead.id].lease, "E", "tb") is True
        assert await b.enqueue([ready, sched]) == [True, True]
        states = ((ready, "ready"), (sched, "scheduled"), (leased, "leased"), (dead, "dead"))
        for t, state in states:
            for copy in (_same_id(t, b"copy", name="idem-other"), _same_id(t, b"c", t.name)):
                got = await b.enqueue([copy])
                assert got == [True], (
                    f"enqueue of an id that exists ({state}) returned {got}, expected [True]"
                )
        twin = new_task(q, b"twin")
        batch = [_same_id(t, b"batch copy") for t, _ in states]
        batch[2:2] = [twin, _same_id(twin, b"twin again", name="idem-twin")]
        got = await b.enqueue(batch)
        assert got == [True] * 6, f"a batch of existing ids and one id twice returned {got}"
        if isinstance(b, BlockingEnqueue):
            got = await asyncio.to_thread(
                b.enqueue_blocking, [_same_id(t, b"blocking copy") for t, _ in states]
            )
            assert got == [True] * 4, f"enqueue_blocking of existing ids returned {got}"
        s = await b.stats(q)
        assert (s.ready, s.scheduled, s.leased, s.dead) == (2, 1, 1, 1), (
            f"enqueueing existing ids changed the counts: stats {s}, expected 2 ready "
            "(the first task and the batch's new id once), 1 scheduled, 1 leased, 1 dead"
        )
        assert await b.enqueue([new_task(q, name="idem-other")]) == [True], (
            "a copy of an existing id stored its own name"
        )
        assert await b.enqueue([new_task(q, name="idem-twin")]) == [True], (
            "the second copy of an id in one batch stored its name"
        )
        by_id = {c.id: c for c in await b.claim([q], 10)}
        assert ready.id in by_id and twin.id in by_id and len(by_id) == 4, f"claimed {by_id}"
        assert (by_id[ready.id].payload, by_id[ready.id].name) == (b"ready", "idem-ready")
        assert by_id[twin.id].payload == b"twin", "the batch's second copy replaced the first"
        [d] = await b.dead_letters(q)
        assert (d.id, d.payload) == (dead.id, b"dead"), f"the dead letter changed: {d}"
        await b.ack([held[leased.id].lease])
        s = await b.stats(q)
        assert (s.leased, s.scheduled) == (4, 1), f"the leased task's lease was lost: {s}"


def _close(x: float | None, want: float | None) -> bool:
    if want is None or x is None:
        return x is want
    return math.isclose(x, want, rel_tol=1e-6, abs_tol=1e-6)


async def check_stats_policy(factory: BrokerFactory) -> None:
    """stats(queue).policy is the EnforcedPolicy the broker stores (the last declare by any
    instance wins), None for a queue never declared."""
    q, r = qname("policy"), qname("policy-rate")
    async with opened_many(factory, 2) as (a, b):
        p = (await a.stats(q)).policy
        assert p is None, f"stats of a queue never declared: policy {p!r}, expected None"
        cases = [
            (a, q, dict(rate="5/s", bucket_size=3, max_concurrent=2, lease=7.0,
                        dedup_window=100.0), (5.0, 3.0, 2, 7.0, 100.0)),
            (b, q, dict(lease=2.5), (None, None, None, 2.5, 3600.0)),
            (a, r, dict(rate="90/m"), (1.5, 2.0, None, 60.0, 3600.0)),
        ]  # fmt: skip
        for declarer, name, kw, want in cases:
            await declare(declarer, name, **kw)
            for reader in (a, b):
                p = (await reader.stats(name)).policy
                assert isinstance(p, EnforcedPolicy), (
                    f"after declare({kw}), stats.policy is {p!r}, expected an EnforcedPolicy"
                )
                got = (p.rate, p.bucket, p.max_concurrent, p.lease, p.dedup_window)
                assert all(_close(x, w) for x, w in zip(got, want, strict=True)), (
                    f"after declare({kw}), stats.policy (rate, bucket, max_concurrent, lease, "
                    f"dedup_window) is {got}, expected {want}"
                )


async def check_dead_letters_limit(factory: BrokerFactory) -> None:
    """dead_letters(limit=) takes an int from 0 to 10,000; anything else raises ConfigError
    naming the value, before any I/O (so also on a broker that is not open)."""
    q = qname("dl-limit")
    problems: list[str] = []
    closed = await make_broker(factory)
    async with opened(factory) as b:
        await declare(b, q, lease=30.0)
        await b.enqueue([new_task(q) for _ in range(3)])
        for c in await b.claim([q], 3):
            assert await b.dead_letter(c.lease, "E", "tb") is True
        for bad in (-1, 10_001, True, False, 1.5, "10", None):
            for where, broker in (("open", b), ("never opened", closed)):
                try:
                    await broker.dead_letters(q, bad)  # type: ignore[arg-type]
                except ConfigError as exc:
                    if repr(bad) not in str(exc) and str(bad) not in str(exc):
                        problems.append(f"limit={bad!r} ({where}): message {exc} lacks it")
                except Exception as exc:
                    problems.append(
                        f"limit={bad!r} ({where}): {type(exc).__name__}: {exc}, expected "
                        "ConfigError"
                    )
                else:
                    problems.append(f"limit={bad!r} ({where}): accepted")
        counts = [len(await b.dead_letters(q, n)) for n in (0, 2, 10_000)]
        assert counts == [0, 2, 3], f"dead_letters with limits 0, 2, 10000 gave {counts}"
    assert not problems, "dead_letters(limit=...):\n  " + "\n  ".join(problems)


#: error texts a broker may not be able to store as they are: each is stored (exactly, or
#: with the unstorable character escaped) or refused with BrokerRefused, nothing else
_TEXTS = {
    "a NUL": ("before \x00 after", "\x00"),
    "a lone surrogate": ("before \ud800 after", "\ud800"),
    "5 MB": ("x" * (5 * 1024 * 1024), ""),
}


def _stored_as_sent(sent: str, bad: str, got: str) -> bool:
    """``got`` is ``sent``, or ``sent`` with its one unstorable character escaped."""
    if got == sent:
        return True
    if not bad or bad in got:
        return False
    head, tail = sent.split(bad)
    middle = got[len(head) : len(got) - len(tail)]
    return got.startswith(head) and got.endswith(tail) and 0 < len(middle) <= 16


async def _still_works(b: Broker, q: str) -> str | None:
    """None when an unrelated task can be enqueued, claimed and acked; else what failed."""
    try:
        t = new_task(q)
        await b.enqueue([t])
        got = await claim_until(b, [q], 1)
        await b.ack([c.lease for c in got])
        s = await b.stats(q)
        if [c.id for c in got] != [t.id] or not _zero(s):
            return f"claimed {[c.id for c in got]} of [{t.id}], then stats {s}"
    except Exception as exc:
        return f"{type(exc).__name__}: {str(exc)[:200]}"
    return None


async def check_unstorable_error_text(factory: BrokerFactory) -> None:
    """dead_letter and retry with an error text holding a NUL, a lone surrogate, or 5 MB
    either store it (read back exactly, or with the character escaped) or raise
    BrokerRefused having done nothing; never another exception, and the broker works on."""
    problems: list[str] = []
    async with opened(factory) as b:
        for label, (text, bad) in _TEXTS.items():
            for op in ("dead_letter", "retry"):
                q, other = qname("text"), qname("text-other")
                await declare(b, q, lease=30.0)
                await b.enqueue([new_task(q)])
                [c] = await claim_until(b, [q], 1)
                what = f"{op} with {label} in the error text"
                try:
                    if op == "dead_letter":
                        ok = await b.dead_letter(c.lease, text, text)
                    else:
                        ok = await b.retry(c.lease, 0.0, text)
                except BrokerRefused as exc:
                    s = await b.stats(q)
                    if (s.leased, s.ready, s.dead) != (1, 0, 0) or not str(exc):
                        problems.append(f"{what}: refused ({exc!s:.100}) but stats are {s}")
                except Exception as exc:
                    problems.append(
                        f"{what}: raised {type(exc).__name__}: {str(exc)[:150]}; expected "
                        "success or offload.errors.BrokerRefused"
                    )
                else:
                    if ok is not True:
                        problems.append(f"{what}: returned {ok!r} for a held lease")
                    elif op == "dead_letter":
                        dls = await b.dead_letters(q)
                        for field in ("error", "traceback"):
                            got = getattr(dls[0], field) if dls else None
                            if got is None or not _stored_as_sent(text, bad, got):
                                shown = "nothing" if got is None else f"{got[:40]!r}"
                                problems.append(f"{what}: {field} read back as {shown}")
                    elif [x.attempt for x in await claim_until(b, [q], 1)] != [2]:
                        problems.append(f"{what}: the retried task did not come back")
                broken = await _still_works(b, other)
                if broken:
                    problems.append(f"after {what}, an unrelated task failed: {broken}")
    assert not problems, "error texts a broker may not store:\n  " + "\n  ".join(problems)
