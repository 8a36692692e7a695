"""Conformance checks of the optional result store (:class:`~offload.brokers.base.ResultStore`,
``Capabilities.results``), which calls (``TaskFunction.call``) need.

A broker that does not declare ``results`` must not half-implement it: the checks assert
that the declaration and the methods agree, and exercise the methods only when declared."""

from __future__ import annotations

import asyncio
import time
import uuid

from ..brokers.base import Broker, ResultStore
from ..errors import ConfigError
from .conformance_support import BrokerFactory, opened, opened_many

__all__ = [
    "check_result_bad_arguments",
    "check_result_expires",
    "check_result_stored_and_read",
    "check_results_declared",
    "check_results_wake_their_channel_only",
]


def _storing(b: Broker) -> ResultStore | None:
    """The broker as a ResultStore when it declares the capability (asserted to agree)."""
    declared = b.capabilities.results
    implements = isinstance(b, ResultStore)
    assert declared == implements, (
        f"{type(b).__name__}: Capabilities.results is {declared} but the ResultStore "
        f"methods are {'present' if implements else 'missing'}; declare what you implement"
    )
    return b if declared else None  # type: ignore[return-value]


def _chan() -> str:
    return f"cf-{uuid.uuid4().hex[:16]}"


async def check_results_declared(factory: BrokerFactory) -> None:
    """``Capabilities.results`` and the ResultStore methods agree."""
    async with opened(factory) as b:
        _storing(b)


async def check_result_stored_and_read(factory: BrokerFactory) -> None:
    """A result's bytes read back unchanged by another instance; a second put replaces
    the first; an unknown key reads as None."""
    async with opened_many(factory, 2) as (a, b):
        sa, sb = _storing(a), _storing(b)
        if sa is None or sb is None:
            return
        key = f"cf-{uuid.uuid4().hex}"
        value = bytes(range(256)) * 3 + b"\x00end"
        await sa.put_result(key, value, 30.0)
        got = await sb.get_result(key)
        assert got == value, f"stored {len(value)} bytes, read back {got!r:.80}"
        await sa.put_result(key, b"second", 30.0)
        got = await sb.get_result(key)
        assert got == b"second", f"a second put must replace the first, read {got!r:.80}"
        missing = await sb.get_result(f"cf-{uuid.uuid4().hex}")
        assert missing is None, f"an unknown key must read as None, got {missing!r:.80}"


async def check_result_expires(factory: BrokerFactory) -> None:
    """A result is gone once its TTL passed (on the broker's clock)."""
    async with opened(factory) as b:
        s = _storing(b)
        if s is None:
            return
        key = f"cf-{uuid.uuid4().hex}"
        await s.put_result(key, b"short-lived", 0.3)
        t0 = time.monotonic()
        assert await s.get_result(key) == b"short-lived", "a fresh result must be readable"
        await asyncio.sleep(max(0.0, 0.45 - (time.monotonic() - t0)))
        left = await s.get_result(key)
        assert left is None, f"a result with ttl=0.3s still read {left!r} after 0.45s"


async def check_results_wake_their_channel_only(factory: BrokerFactory) -> None:
    """A listener blocked in ``wait_results`` is woken by a put from another instance
    well before its timeout; every result reaches its own channel exactly once, none
    another's."""
    async with opened_many(factory, 3) as (sender, la, lb):
        ss, sa, sb = _storing(sender), _storing(la), _storing(lb)
        if ss is None or sa is None or sb is None:
            return
        ca, cb = _chan(), _chan()
        assert await sa.wait_results(ca, 0) == [], "a new channel must start empty"
        assert await sb.wait_results(cb, 0) == [], "a new channel must start empty"

        async def put_later() -> float:
            await asyncio.sleep(0.2)
            await ss.put_result("cf-one-" + ca, b"one", 30.0, ca)
            return time.monotonic()

        putter = asyncio.create_task(put_later())
        got = await sa.wait_results(ca, 5.0)
        woke = time.monotonic()
        sent = await putter
        assert got == [("cf-one-" + ca, b"one")], f"expected the one result, got {got!r:.200}"
        assert woke - sent < 1.0, f"woken {woke - sent:.2f}s after the put: not by the broker"
        want_a = {f"cf-a{i}-{ca}": f"a{i}".encode() for i in range(60)}
        want_b = {f"cf-b{i}-{cb}": f"b{i}".encode() for i in range(40)}
        for (ka, va), (kb, vb) in zip(want_a.items(), want_b.items(), strict=False):
            await ss.put_result(ka, va, 30.0, ca)
            await ss.put_result(kb, vb, 30.0, cb)
        for k, v in list(want_a.items())[len(want_b) :]:
            await ss.put_result(k, v, 30.0, ca)
        for s, chan, want in ((sa, ca, want_a), (sb, cb, want_b)):
            seen: dict[str, bytes] = {}
            deadline = time.monotonic() + 5.0
            while len(seen) < len(want) and time.monotonic() < deadline:
                for k, v in await s.wait_results(chan, 0.5):
                    assert k not in seen, f"result {k!r} delivered twice to its channel"
                    seen[k] = v
            assert seen == want, (
                f"channel got {len(seen)} results, {len(want)} sent to it; missing "
                f"{sorted(set(want) - set(seen))[:3]}, foreign {sorted(set(seen) - set(want))[:3]}"
            )
        assert await sa.wait_results(ca, 0) == [], "a delivered result must not come again"


async def check_result_bad_arguments(factory: BrokerFactory) -> None:
    """A TTL of 0, an empty key or a reply channel with spaces raise ConfigError before
    any I/O."""
    async with opened(factory) as b:
        s = _storing(b)
        if s is None:
            return
        for key, ttl, chan in (("k", 0.0, None), ("", 1.0, None), ("k", 1.0, "a b")):
            try:
                await s.put_result(key, b"x", ttl, chan)
            except ConfigError:
                continue
            raise AssertionError(f"put_result({key!r}, ttl={ttl}, {chan!r}) must raise ConfigError")
