"""Helpers shared by the conformance checks (not public; see :mod:`offload.testing`).

Every check builds brokers through a *factory*: a callable taking no arguments that returns
a new, unopened broker (or an awaitable of one). All brokers one factory returns must share
one store, so a check can reopen it or run several clients at once. Checks use queue and
task function names of their own (random suffixes), so they neither need an empty store
nor disturb each other; a fresh store per check still keeps failures apart.
"""

from __future__ import annotations

import asyncio
import inspect
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

from ..brokers.base import Broker, Claimed, NewTask
from ..core.envelope import new_id
from ..core.policy import QueuePolicy

__all__ = [
    "BrokerFactory",
    "CouldNotCheck",
    "TooSlow",
    "assert_wakes",
    "claim_until",
    "declare",
    "make_broker",
    "new_task",
    "opened",
    "opened_many",
    "qname",
    "require_live",
    "same_leases",
    "scaled_attempts",
    "sleep_until",
]

#: a callable returning a new unopened broker (or an awaitable of one) on the check's store
BrokerFactory = Callable[[], Broker | Awaitable[Broker]]

#: slack for comparisons between broker-clock readings taken by different calls
EPS = 0.005

#: time scales a timing check tries, one after the other, before it gives up as too slow
SCALES = (1.0, 3.0, 9.0)


class TooSlow(Exception):
    """Raised inside a timing check when the machine was too slow for an exact assertion
    (a lease or eta ran out before the broker could be asked); the check runs again with
    longer times (:func:`scaled_attempts`)."""


class CouldNotCheck(AssertionError):
    """A timing check could not be checked: even with its longest times the machine was too
    slow. It did not pass; rerun it on a less busy machine. (The pytest suite reports it as
    a skip with this message.)"""


def require_live(now: float, deadline: float, what: str) -> None:
    """Raise :class:`TooSlow` unless the broker clock ``now`` is still before ``deadline``:
    an exact count read at ``now`` is only meaningful while the lease or eta holds."""
    if now >= deadline - EPS:
        raise TooSlow(f"{what}: the broker clock passed the deadline by {now - deadline:.3f}s")


async def scaled_attempts(
    attempt: Callable[[float], Awaitable[None]], what: str, scales: Sequence[float] = SCALES
) -> None:
    """Run ``attempt(scale)`` (a check body whose leases, etas and delays are multiplied by
    ``scale``, on fresh queues) until it completes without :class:`TooSlow`; raise
    :class:`CouldNotCheck` when every scale was too slow, so a check never passes without
    having asserted what it is for."""
    reasons = []
    for scale in scales:
        try:
            await attempt(scale)
        except TooSlow as exc:
            reasons.append(f"x{scale:g}: {exc}")
        else:
            return
    raise CouldNotCheck(
        f"could not check {what}: the machine was too slow (tried with times scaled "
        f"{', '.join(reasons)}); run the check again on a less busy machine"
    )


def same_leases(got: object, want: Sequence[float | None]) -> bool:
    """Whether ``extend``'s result ``got`` is, lease by lease, None where ``want`` is None
    and a float within a millisecond of the lease length where it is not."""
    if not isinstance(got, list) or len(got) != len(want):
        return False
    for g, w in zip(got, want, strict=True):
        if w is None:
            if g is not None:
                return False
        elif not (isinstance(g, float) and abs(g - w) < 1e-3):
            return False
    return True


async def make_broker(factory: BrokerFactory) -> Broker:
    """A new, unopened broker from ``factory``."""
    broker = factory()
    if inspect.isawaitable(broker):
        broker = await broker
    return broker  # type: ignore[return-value]


@asynccontextmanager
async def opened(factory: BrokerFactory) -> AsyncIterator[Broker]:
    """An opened broker, closed on the way out (a failing body keeps its own error)."""
    broker = await make_broker(factory)
    await broker.open()
    try:
        yield broker
    except BaseException:
        try:
            await broker.close()
        except Exception:
            pass
        raise
    await broker.close()


@asynccontextmanager
async def opened_many(factory: BrokerFactory, n: int) -> AsyncIterator[list[Broker]]:
    """``n`` opened brokers on the same store (separate instances, separate connections)."""
    async with AsyncExitStack() as stack:
        yield [await stack.enter_async_context(opened(factory)) for _ in range(n)]


def qname(tag: str) -> str:
    """A queue name no other check (or earlier run on the same store) uses."""
    return f"cf-{tag}-{uuid.uuid4().hex[:10]}"


def new_task(
    queue: str,
    payload: bytes | None = None,
    *,
    name: str | None = None,
    eta: float | None = None,
    delay: float = 0.0,
) -> NewTask:
    """A task with a fresh id and (by default) a payload that names it."""
    tid = new_id()
    return NewTask(
        id=tid,
        queue=queue,
        payload=f"payload-{tid}".encode() if payload is None else payload,
        name=name,
        eta=eta,
        delay=delay,
    )


async def declare(broker: Broker, queue: str, **policy: Any) -> QueuePolicy:
    p = QueuePolicy(queue, **policy)
    await broker.declare([p])
    return p


async def sleep_until(broker: Broker, when: float) -> None:
    """Sleep until the *broker's* clock reads at least ``when``."""
    while True:
        now = await broker.now()
        if now >= when:
            return
        await asyncio.sleep(min(max(when - now, 0.005), 0.1))


async def claim_until(
    broker: Broker,
    queues: Sequence[str],
    want: int,
    *,
    limit: int = 100,
    timeout: float = 3.0,
    interval: float = 0.02,
) -> list[Claimed]:
    """Poll ``claim`` until ``want`` tasks were claimed or ``timeout`` (wall) seconds pass."""
    got: list[Claimed] = []
    deadline = time.monotonic() + timeout
    while len(got) < want and time.monotonic() < deadline:
        got += await broker.claim(queues, min(limit, want - len(got)))
        if len(got) < want:
            await asyncio.sleep(interval)
    return got


async def assert_wakes(
    waiter: Broker,
    queues: Sequence[str],
    action: Callable[[], Awaitable[object]],
    *,
    what: str,
    within: float = 0.2,
) -> None:
    """Start ``waiter.wait(queues)`` while nothing is claimable, run ``action`` (normally
    on another broker instance), and assert the wait returns within ``within`` seconds of
    the action completing.

    Early returns are allowed by the protocol, so a wait that returns before the action
    is simply started again; one that keeps returning at once is busy polling."""
    for _ in range(5):
        woke: list[float] = []
        task = asyncio.ensure_future(waiter.wait(list(queues), 10.0))
        task.add_done_callback(lambda _t, woke=woke: woke.append(time.monotonic()))
        await asyncio.sleep(0.15)
        if not task.done():
            break
        await task  # a spurious early return: allowed; try again
    else:
        raise AssertionError(
            f"wait({list(queues)}) returned at once five times in a row while nothing was "
            f"claimable (before: {what}); it must block until something may be claimable"
        )
    try:
        await action()
        done_at = time.monotonic()
        try:
            await asyncio.wait_for(asyncio.shield(task), timeout=within + 2.0)
        except TimeoutError:
            raise AssertionError(
                f"wait({list(queues)}) did not return within {within + 2.0:.1f}s after "
                f"{what} (its timeout was 10s)"
            ) from None
        latency = max(0.0, woke[0] - done_at)
        assert latency < within, (
            f"wait({list(queues)}) returned {latency:.3f}s after {what}; expected < {within}s"
        )
    finally:
        if not task.done():
            task.cancel()
            try:
                await task
            except (asyncio.CancelledError, Exception):
                pass
