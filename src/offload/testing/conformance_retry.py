"""Conformance check of the optional retry overrides
(:class:`~offload.brokers.overrides.RetryOverrides`): a queue's retry policy stored by an
explicit change, which ``declare`` never touches. See :mod:`offload.testing.conformance`."""

from __future__ import annotations

from ..brokers.base import TaskInspection
from ..brokers.overrides import RetryOverrides
from ..core.policy import RetryPolicy
from .conformance_support import BrokerFactory, declare, opened, qname

__all__ = ["check_retry_overrides"]


async def check_retry_overrides(factory: BrokerFactory) -> None:
    """An override reads back as stored (unlimited limit and age included) from another
    broker instance; a declaration, even another one, leaves it as it is; setting one
    declares nothing and keeps the pause; None clears it; dropping the queue forgets it."""
    q, bare, never = qname("retry"), qname("retry-bare"), qname("retry-never")
    r1 = RetryPolicy(limit=1, min_backoff=0.5, max_backoff=30.0, max_doublings=2)
    r2 = RetryPolicy(limit=None, age_limit=90.5, min_backoff=0.0, max_backoff=0.0)
    async with opened(factory) as b:
        if not isinstance(b, RetryOverrides):
            return  # optional: the Cloud Tasks surface refuses retryConfig on such a broker
        await declare(b, q, rate=5.0)
        assert await b.retry_overrides([q, never]) == {}, "an override nobody stored"
        assert await b.retry_overrides([]) == {}
        await b.set_retry_override(q, r1)
        await declare(b, q, rate=7.0, retry=RetryPolicy(limit=9))
        policy = (await b.stats(q)).policy
        assert policy is not None and policy.rate == 7.0, "the declaration did not apply"
        await b.set_paused(bare, True)
        await b.set_retry_override(bare, r2)
        stats = await b.stats(bare)
        assert stats.paused, "storing an override resumed a paused queue"
        assert stats.policy is None, "storing an override declared the queue"
        await b.set_retry_override(never, r1)
        assert (await b.stats(never)).policy is None, "an override declared a new queue"
        await b.set_retry_override(never, None)
    async with opened(factory) as b:
        assert isinstance(b, RetryOverrides)
        got = await b.retry_overrides([q, bare, never])
        assert got == {q: r1, bare: r2}, f"stored {r1} and {r2}, read back {got}"
        await b.set_retry_override(q, None)
        assert await b.retry_overrides([q, bare]) == {bare: r2}, "None did not clear it"
        await b.set_retry_override(q, r2)
        await b.set_retry_override(q, r1)
        assert await b.retry_overrides([q]) == {q: r1}, "the last override does not win"
        if isinstance(b, TaskInspection) and b.capabilities.inspect:
            await b.drop_queue(q)
            assert await b.retry_overrides([q]) == {}, "drop_queue kept the override"
        await b.set_retry_override(bare, None)
