"""The worker's hot path, on the real brokers: acks piled up behind an outage or slow
verdicts still reach the broker; plain-function handlers run on as few threads as keep up,
yet a handler that blocks never holds back the tasks claimed behind it."""

from __future__ import annotations

import asyncio
import threading

import pytest

from offload import App, Worker
from offload.brokers import broker_from_url
from offload.brokers.base import NewTask
from offload.core.policy import QueuePolicy
from offload.worker.outbox import ACK_BATCH, Outbox

pytestmark = pytest.mark.timeout(120)


async def test_acks_piled_up_beyond_what_one_call_takes_are_all_recorded(broker_url):
    """Thousands of acks waiting at once (after an outage, or behind slow verdicts) go out
    in several calls: one call with all of them is more than a Redis script takes, and a
    refused ack would make every one of those finished tasks run again."""
    n = 20 * ACK_BATCH  # 10,000: beyond what one ack call on Redis takes
    b = broker_from_url(broker_url)
    await b.open()
    await b.declare([QueuePolicy("q")])
    for i in range(0, n, 1000):
        await b.enqueue([NewTask(f"t{j}", "q", b"x") for j in range(i, i + 1000)])
    box = Outbox()
    claimed = 0
    while claimed < n:
        got = await b.claim(["q"], 250)
        assert got, "the broker stopped handing out tasks"
        claimed += len(got)
        for c in got:
            box.ack(c.lease)
    assert await box.flush(b) is True
    assert box.refused == 0 and len(box) == 0
    st = await b.stats("q")
    assert (st.ready, st.leased, st.dead) == (0, 0, 0)
    await b.close()


def test_a_blocked_handler_does_not_hold_back_the_tasks_claimed_behind_it(broker_url):
    """Short tasks share a few busy threads; a job left waiting for one gets a thread of
    its own. Here every busy thread is blocked until the quick tasks have run: they must
    still run (a thread is woken for them), or the test times out."""
    app = App("tp", broker=broker_url)
    app.queue("q")
    release = threading.Event()
    quick_done = threading.Event()
    quick_left = [5]
    lock = threading.Lock()

    @app.task(queue="q", name="block")
    def block() -> None:
        assert release.wait(30), "the quick tasks never ran while this one blocked"

    @app.task(queue="q", name="quick")
    def quick() -> None:
        with lock:
            quick_left[0] -= 1
            if quick_left[0] == 0:
                quick_done.set()
                release.set()

    for _ in range(4):  # more blocked handlers than threads woken at once
        block.send()
    for _ in range(5):
        quick.send()

    async def main() -> None:
        w = Worker(app, concurrency=16, burst=True)
        stats = await asyncio.wait_for(w.run(), 60)
        assert stats.succeeded == 9 and stats.retried == 0

    asyncio.run(main())
    assert quick_done.is_set()
    app.close()


def test_a_bug_in_starting_a_task_costs_that_task_not_the_worker(broker_url, monkeypatch):
    """A failure of the worker's own code while it starts a task is judged like a failure
    of the task (retried), and the tasks around it run: the claim loop goes on."""
    app = App("tp", broker=broker_url)
    app.queue("q")
    ran: list[int] = []

    @app.task(queue="q", name="t")
    def t(i: int) -> None:
        ran.append(i)

    prepare = Worker._prepare

    def flaky_prepare(self, run):
        if run.claim.attempt == 1 and run.claim.name == "bad":
            raise RuntimeError("a bug of the worker's own")
        return prepare(self, run)

    monkeypatch.setattr(Worker, "_prepare", flaky_prepare)
    t.send(1)
    t.send_with(args=(2,), name="bad")
    t.send(3)

    async def main() -> None:
        stats = await asyncio.wait_for(Worker(app, burst=True).run(), 60)
        assert stats.succeeded == 3 and stats.retried == 1

    asyncio.run(main())
    assert sorted(ran) == [1, 2, 3]
    app.close()


def test_runs_of_ten_ms_or_more_share_a_recent_memory_reading(broker_url, monkeypatch):
    """Every run of 10 ms or more gets a memory figure, but runs that end together share
    a reading under a millisecond old: under load every run's wall passes 10 ms, and a
    system call for each cost the loop a microsecond per task."""
    from offload.testing import run_until_idle
    from offload.worker import execute

    calls = [0]
    real = execute._maxrss

    def counted(who):
        calls[0] += 1
        return real(who)

    monkeypatch.setattr(execute, "_maxrss", counted)
    app = App("rss", broker=broker_url)
    app.queue("q")

    @app.task(queue="q", name="slow")
    async def slow() -> None:
        await asyncio.sleep(0.015)

    n = 640
    slow.send_many([((), {})] * n)
    stats = run_until_idle(app, concurrency=64)
    assert stats.succeeded == n
    (m,) = [x for x in app.metrics() if x.task == "slow"]
    measured = sum(v for k, v in m.extra.items() if k.startswith("h.rss."))
    assert measured == n, "a run of 10 ms or more went without a memory figure"
    assert calls[0] < n / 4, f"{calls[0]} readings for {n} runs that ended in batches"
    app.close()
