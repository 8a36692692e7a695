"""The outbox tells a refused request from an outage: a verdict the broker refuses is sent
once more in a form it can store, else dropped and logged, and never blocks the acks queued
behind it; an outage keeps everything for later. Run against a real SQLite broker."""

from __future__ import annotations

import logging

from offload.brokers import broker_from_url
from offload.brokers.base import NewTask
from offload.core.policy import QueuePolicy
from offload.errors import BrokerRefused, BrokerUnavailable
from offload.worker.outbox import Outbox


async def _two_claimed(tmp_path):
    b = broker_from_url(f"sqlite:///{tmp_path / 'o.db'}")
    await b.open()
    await b.declare([QueuePolicy("q")])
    await b.enqueue([NewTask("t1", "q", b"1"), NewTask("t2", "q", b"2")])
    got = await b.claim(["q"], 10)
    return b, {c.id: c for c in got}


async def test_a_refused_verdict_falls_back_and_never_blocks_the_acks_behind_it(tmp_path, caplog):
    b, claimed = await _two_claimed(tmp_path)
    box = Outbox()
    sent: list[str] = []

    async def refuse():
        raise BrokerRefused("value too long")

    async def fallback():
        sent.append("fallback")
        return await b.dead_letter(claimed["t1"].lease, "short", "")

    box.verdict(refuse, fallback, "t1")
    box.ack(claimed["t2"].lease)
    with caplog.at_level(logging.WARNING, logger="offload.worker"):
        assert await box.flush(b) is True
    assert sent == ["fallback"] and len(box) == 0
    assert [d.error for d in await b.dead_letters("q")] == ["short"]
    st = await b.stats("q")
    assert (st.ready, st.leased, st.dead) == (0, 0, 1)  # t2 acked, t1 dead
    await b.close()


async def test_a_verdict_refused_twice_is_dropped_and_logged_once(tmp_path, caplog):
    b, claimed = await _two_claimed(tmp_path)
    box = Outbox()

    async def refuse():
        raise BrokerRefused("no")

    async def bug():
        raise RuntimeError("a broker bug")

    box.verdict(refuse, refuse, "t1")
    box.verdict(bug, None, "t1")
    box.ack(claimed["t2"].lease)
    with caplog.at_level(logging.ERROR, logger="offload.worker"):
        assert await box.flush(b) is True
    assert box.refused == 2 and len(box) == 0
    assert sum("refused its verdict for good" in r.getMessage() for r in caplog.records) == 2
    assert (await b.stats("q")).leased == 1  # t1 stays leased: it runs again later
    await b.close()


async def test_an_outage_keeps_everything_for_the_next_flush(tmp_path):
    b, claimed = await _two_claimed(tmp_path)
    box = Outbox()
    calls = 0

    async def flaky():
        nonlocal calls
        calls += 1
        if calls == 1:
            raise BrokerUnavailable("connection refused")
        return await b.retry(claimed["t1"].lease, 0.0, "again")

    box.verdict(flaky, None, "t1")
    box.ack(claimed["t2"].lease)
    assert await box.flush(b) is False and len(box) == 2
    assert await box.flush(b) is True and len(box) == 0
    st = await b.stats("q")
    assert (st.ready, st.leased) == (1, 0)
    await b.close()


async def test_verdicts_go_out_together_and_an_outage_keeps_only_what_failed(tmp_path):
    import asyncio

    b, claimed = await _two_claimed(tmp_path)
    box = Outbox()
    first_started = asyncio.Event()
    order: list[str] = []

    async def slow():  # waits for the next verdict to have started: not one after another
        first_started.set()
        await asyncio.wait_for(second_started.wait(), 5)
        order.append("slow")

    second_started = asyncio.Event()

    async def quick():
        second_started.set()
        await asyncio.wait_for(first_started.wait(), 5)
        order.append("quick")

    outage = [True]

    async def away():
        if outage[0]:
            raise BrokerUnavailable("connection refused")
        order.append("away")

    box.verdict(slow, None, "a")
    box.verdict(away, None, "b")
    box.verdict(quick, None, "c")
    box.ack(claimed["t2"].lease)
    assert await box.flush(b) is False  # 'b' met the outage
    assert sorted(order) == ["quick", "slow"] and len(box) == 2  # 'b' and the ack stay
    box.verdict(quick, None, "d")  # queued behind 'b'
    outage[0] = False
    assert await box.flush(b) is True and len(box) == 0
    assert order[2:] == ["away", "quick"]
    assert (await b.stats("q")).leased == 1  # t2 acked
    await b.close()


async def test_a_release_queued_while_one_is_in_flight_is_not_lost(tmp_path):
    # Releases of one delay share a list; one queued during the round trip of the list
    # being sent used to be deleted with it, unsent: its task stayed leased until its lease
    # ran out (then counted as an attempt).
    import asyncio

    b, claimed = await _two_claimed(tmp_path)
    box = Outbox()
    in_flight, go = asyncio.Event(), asyncio.Event()
    real = b.release
    sent: list[list[str]] = []

    async def slow_release(leases, delay=0.0):
        sent.append([x.id for x in leases])
        if len(sent) == 1:
            in_flight.set()
            await go.wait()
        await real(leases, delay)

    b.release = slow_release
    box.release(claimed["t1"].lease)
    flushing = asyncio.ensure_future(box.flush(b))
    await in_flight.wait()
    box.release(claimed["t2"].lease)  # the same delay, while t1's release is out
    go.set()
    assert await flushing is True and len(box) == 0
    assert sent == [["t1"], ["t2"]]
    st = await b.stats("q")
    assert (st.ready, st.leased) == (2, 0)
    await b.close()


async def test_a_release_met_by_an_outage_stays_for_the_next_flush_in_order(tmp_path):
    b, claimed = await _two_claimed(tmp_path)
    box = Outbox()
    real = b.release
    sent: list[list[str]] = []

    async def away_once(leases, delay=0.0):
        sent.append([x.id for x in leases])
        if len(sent) == 1:
            box.release(claimed["t2"].lease)  # queued during the failed round trip
            raise BrokerUnavailable("connection refused")
        await real(leases, delay)

    b.release = away_once
    box.release(claimed["t1"].lease)
    assert await box.flush(b) is False and len(box) == 2
    assert await box.flush(b) is True and len(box) == 0
    assert sent == [["t1"], ["t1", "t2"]]
    assert (await b.stats("q")).ready == 2
    await b.close()
