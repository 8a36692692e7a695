"""Conformance checks of the optional task inspection capability
(:class:`~offload.brokers.base.TaskInspection`, ``Capabilities.inspect``) and of
``QueueStats.oldest_ready_at``, which every broker fills.

A broker that does not declare ``inspect`` must not half-implement it either: the checks
assert that the declaration and the methods agree, and check the methods only when
declared."""

from __future__ import annotations

from ..brokers.base import Broker, TaskInspection
from ..brokers.pages import next_page_after
from ..errors import ConfigError
from .conformance_support import (
    EPS,
    BrokerFactory,
    claim_until,
    declare,
    new_task,
    opened,
    qname,
    require_live,
    scaled_attempts,
)

__all__ = [
    "check_drop_queue",
    "check_get_task_states",
    "check_list_tasks_pages",
    "check_run_task",
    "check_stats_oldest_ready_at",
]


def _inspecting(b: Broker) -> TaskInspection | None:
    """The broker as a TaskInspection when it declares the capability (asserted to agree)."""
    declared = b.capabilities.inspect
    implements = isinstance(b, TaskInspection)
    assert declared == implements, (
        f"{type(b).__name__}: Capabilities.inspect is {declared} but the TaskInspection "
        f"methods are {'present' if implements else 'missing'}; declare what you implement"
    )
    return b if isinstance(b, TaskInspection) else None


async def check_get_task_states(factory: BrokerFactory) -> None:
    """get_task sees a task in every state, with its eta, attempts, error and traceback;
    None for an unknown id or another queue's task."""

    async def attempt(k: float) -> None:
        q, other = qname("get"), qname("get-other")
        async with opened(factory) as b:
            ins = _inspecting(b)
            if ins is None:
                return
            await declare(b, q, lease=30.0)
            t0 = await b.now()
            ready, named = new_task(q), new_task(q, name="get-named")
            leased, retried, dead = new_task(q), new_task(q), new_task(q)
            await b.enqueue([ready, named, leased, retried, dead])
            scheduled = new_task(q, delay=60.0 * k)
            await b.enqueue([scheduled])
            got = {c.id: c for c in await b.claim([q], 10)}
            assert set(got) == {ready.id, named.id, leased.id, retried.id, dead.id}, (
                f"claimed {sorted(got)}"
            )
            # put back what should stay ready, keep one leased, retry one, bury one
            await b.release([got[ready.id].lease, got[named.id].lease])
            assert await b.retry(got[retried.id].lease, 60.0 * k, "ValueError: again") is True
            assert await b.dead_letter(got[dead.id].lease, "KeyError: x", "Traceback\n  x")
            now = await b.now()
            require_live(now, got[leased.id].lease_until, "the lease ran out")
            r = await ins.get_task(q, ready.id)
            assert r is not None, "get_task returned None for a ready task"
            assert (r.id, r.queue, r.name, r.payload) == (ready.id, q, None, ready.payload)
            assert r.state == "ready" and r.attempts == 0, f"released task: {r}"
            assert t0 - EPS <= r.eta <= now + EPS, f"ready eta {r.eta} not in [{t0}, {now}]"
            assert t0 - EPS <= r.enqueued_at <= now + EPS, f"enqueued_at {r.enqueued_at}"
            r = await ins.get_task(q, named.id)
            assert r is not None and r.name == "get-named", f"named task: {r}"
            r = await ins.get_task(q, scheduled.id)
            assert r is not None and r.state == "scheduled", f"scheduled task: {r}"
            assert abs(r.eta - (r.enqueued_at + 60.0 * k)) < 0.5, f"scheduled eta: {r}"
            assert r.first_attempt_at is None and r.attempts == 0, f"never run: {r}"
            r = await ins.get_task(q, leased.id)
            assert r is not None and r.state == "leased", f"leased task: {r}"
            assert abs(r.eta - got[leased.id].lease_until) < 0.01, (
                f"a leased task's eta is its lease's end {got[leased.id].lease_until}: {r}"
            )
            assert r.attempts == 1 and r.first_attempt_at is not None, f"leased task: {r}"
            r = await ins.get_task(q, retried.id)
            assert r is not None and r.state == "scheduled", f"retried task: {r}"
            assert (r.attempts, r.error) == (1, "ValueError: again"), f"retried task: {r}"
            r = await ins.get_task(q, dead.id)
            assert r is not None and r.state == "dead", f"dead task: {r}"
            assert (r.error, r.traceback) == ("KeyError: x", "Traceback\n  x"), f"dead: {r}"
            assert t0 - EPS <= r.eta <= (await b.now()) + EPS, f"a dead task's eta: {r}"
            assert await ins.get_task(q, "no-such-id") is None
            assert await ins.get_task(other, ready.id) is None, "found in another queue"

    await scaled_attempts(attempt, "get_task while a lease holds")


async def check_list_tasks_pages(factory: BrokerFactory) -> None:
    """list_tasks pages through a queue's tasks in every state, in any order: following
    next_page_after until it is None gives each task once, pages never above the limit;
    only that queue's; limit checked before any I/O."""
    q, other = qname("list"), qname("list-other")
    async with opened(factory) as b:
        ins = _inspecting(b)
        if ins is None:
            return
        await declare(b, q, lease=30.0)
        tasks = [new_task(q) for _ in range(5)] + [new_task(q, delay=60.0)]
        await b.enqueue(tasks)
        await b.enqueue([new_task(other), new_task(other)])
        claimed = await b.claim([q], 2)
        assert await b.dead_letter(claimed[0].lease, "E", "tb")
        want = sorted(t.id for t in tasks)
        seen: list[str] = []
        after = None
        for _ in range(20):
            page = await ins.list_tasks(q, limit=4, after=after)
            assert len(page) <= 4, f"limit=4 returned {len(page)}"
            seen += [r.id for r in page]
            assert all(r.queue == q for r in page)
            after = next_page_after(page, 4)
            if after is None:
                break
        else:
            raise AssertionError(f"20 pages of 4 and still a next page token, after {seen}")
        assert sorted(seen) == want, f"pages gave {seen}, want every task once: {want}"
        states = {r.id: r.state for r in await ins.list_tasks(q, limit=100)}
        assert states[claimed[0].id] == "dead" and states[claimed[1].id] == "leased", states
        assert sorted(states.values()).count("scheduled") == 1, states
        assert await ins.list_tasks(q, limit=0) == []
        for bad in (-1, 10_001, True, 2.5, "3"):
            try:
                await ins.list_tasks(q, limit=bad)  # type: ignore[arg-type]
            except ConfigError:
                pass
            else:
                raise AssertionError(f"list_tasks(limit={bad!r}) must raise ConfigError")


async def check_run_task(factory: BrokerFactory) -> None:
    """run_task makes a scheduled task claimable now; a due one stays as it is; a leased,
    dead or unknown one is left alone (False)."""
    q = qname("run")
    async with opened(factory) as b:
        ins = _inspecting(b)
        if ins is None:
            return
        await declare(b, q, lease=30.0)
        later, due, busy, dead = new_task(q, delay=300.0), new_task(q), new_task(q), new_task(q)
        await b.enqueue([busy, dead])
        leases = {c.id: c for c in await b.claim([q], 2)}
        assert await b.dead_letter(leases[dead.id].lease, "E", "tb")
        await b.enqueue([later, due])
        before = await b.now()
        assert await ins.run_task(q, later.id) is True, "run_task on a scheduled task"
        assert await ins.run_task(q, due.id) is True, "run_task on a ready task"
        assert await ins.run_task(q, busy.id) is False, "run_task on a leased task"
        assert await ins.run_task(q, dead.id) is False, "run_task on a dead task"
        assert await ins.run_task(q, "no-such-id") is False
        r = await ins.get_task(q, later.id)
        assert r is not None and r.state == "ready", f"after run_task: {r}"
        assert before - 1.0 <= r.eta <= (await b.now()) + EPS, f"eta after run_task: {r}"
        got = sorted(c.id for c in await claim_until(b, [q], 2))
        assert got == sorted([later.id, due.id]), f"claimed {got} after run_task"


async def check_drop_queue(factory: BrokerFactory) -> None:
    """drop_queue deletes a queue's tasks in every state, its names, policy and pause, and
    nothing of another queue; a dropped task's lease is lost."""
    q, other = qname("drop"), qname("drop-other")
    async with opened(factory) as b:
        ins = _inspecting(b)
        if ins is None:
            return
        await declare(b, q, lease=30.0, max_concurrent=5)
        await b.enqueue([new_task(q, name="kept-name"), new_task(q), new_task(q, delay=60)])
        await b.enqueue([new_task(q), new_task(q)])
        got = await b.claim([q], 2)
        assert len(got) == 2
        assert await b.dead_letter(got[1].lease, "E", "tb")
        await b.enqueue([new_task(other)])
        await b.set_paused(q, True)
        assert await ins.drop_queue(q) == 5, "drop_queue must count every task it deleted"
        s = await b.stats(q)
        assert (s.ready, s.scheduled, s.leased, s.dead, s.paused, s.policy) == (
            0, 0, 0, 0, False, None,
        ), f"after drop_queue: {s}"  # fmt: skip
        assert await ins.list_tasks(q) == []
        assert await b.retry(got[0].lease, 0.0, "E") is False, "a dropped task's lease held"
        await b.ack([got[0].lease])  # ignored, not an error
        assert await b.enqueue([new_task(q, name="kept-name")]) == [True], (
            "a dropped queue's names must be free again"
        )
        assert (await b.stats(other)).ready == 1, "drop_queue touched another queue"
        assert await ins.drop_queue(qname("never")) == 0


async def check_stats_oldest_ready_at(factory: BrokerFactory) -> None:
    """stats().oldest_ready_at is the broker-clock time since which the oldest claimable
    task has been claimable; None when nothing is (scheduled and leased tasks do not count)."""
    q = qname("oldest")
    async with opened(factory) as b:
        await declare(b, q, lease=30.0)
        assert (await b.stats(q)).oldest_ready_at is None, "empty queue"
        await b.enqueue([new_task(q, delay=60.0)])
        assert (await b.stats(q)).oldest_ready_at is None, "only a scheduled task"
        now = await b.now()
        await b.enqueue([new_task(q, eta=now - 30.0), new_task(q, eta=now - 10.0)])
        s = await b.stats(q)
        assert s.oldest_ready_at is not None and abs(s.oldest_ready_at - (now - 30.0)) < 0.01, (
            f"oldest_ready_at {s.oldest_ready_at}, want the oldest eta {now - 30.0}"
        )
        got = await b.claim([q], 1)
        s = await b.stats(q)
        assert s.oldest_ready_at is not None and abs(s.oldest_ready_at - (now - 10.0)) < 0.01, (
            f"after claiming the oldest: {s.oldest_ready_at}, want {now - 10.0}"
        )
        await b.claim([q], 1)
        assert (await b.stats(q)).oldest_ready_at is None, "only leased and scheduled tasks"
        assert len(got) == 1
