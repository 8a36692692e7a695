"""Claiming ahead (offload.worker.ahead), on every broker: while a backlog of quick async
tasks waits, the worker claims the next batch as it starts one and holds it for the slots
that free. Every task still runs once; what is held goes back uncounted when no slot frees
in time and when the worker stops; and nothing is claimed ahead where a held task would
hold what others need."""

from __future__ import annotations

import asyncio

import pytest

from offload import App, Worker, current_task
from offload.testing.apps import run_until_idle
from offload.worker import ahead

pytestmark = pytest.mark.timeout(120)


def quick_app(url: str, **queue_kw) -> tuple[App, list[tuple[int, int]]]:
    app = App("ahead", broker=url)
    app.queue("q", **queue_kw)
    done: list[tuple[int, int]] = []

    @app.task(queue="q", name="a")
    async def a(i: int) -> None:
        await asyncio.sleep(0)  # one real suspension, as a round trip would
        done.append((i, current_task().attempt))

    return app, done


def test_a_backlog_of_quick_async_tasks_is_claimed_ahead_and_runs_once_each(broker_url):
    app, done = quick_app(broker_url)
    n = 3000
    app.get_task("a").send_many([((i,), {}) for i in range(n)])
    stats = run_until_idle(app, concurrency=16)
    assert stats.claimed_ahead > 0  # else this test proves nothing
    assert sorted(i for i, _ in done) == list(range(n))
    assert {att for _, att in done} == {1}
    assert stats.succeeded == n and stats.claimed == n + stats.released
    st = app.stats("q")
    assert (st.ready, st.leased, st.dead) == (0, 0, 0)
    app.close()


def test_what_no_slot_takes_in_time_goes_back_uncounted(broker_url, monkeypatch):
    # HOLD_MAX 0: every held batch is out of time at once, so each is given back; the
    # tasks then run from the queue as if never claimed (first attempt, once each)
    monkeypatch.setattr(ahead, "HOLD_MAX", 0.0)
    app, done = quick_app(broker_url)
    n = 2000
    app.get_task("a").send_many([((i,), {}) for i in range(n)])
    stats = run_until_idle(app, concurrency=16)
    assert stats.claimed_ahead > 0 and stats.released > 0
    assert sorted(i for i, _ in done) == list(range(n))
    assert {att for _, att in done} == {1}  # a task given back was no attempt
    assert stats.succeeded == n and stats.claimed == n + stats.released
    st = app.stats("q")
    assert (st.ready, st.leased, st.dead) == (0, 0, 0)
    app.close()


def test_a_stop_gives_back_what_is_held(broker_url):
    app, done = quick_app(broker_url)
    n = 20_000
    app.get_task("a").send_many([((i,), {}) for i in range(n)])

    async def main():
        w = Worker(app, queues=["q"], concurrency=16, grace=10)
        task = asyncio.ensure_future(w.run())
        while not w._held:  # stop exactly while a batch is held
            await asyncio.sleep(0)
            assert not task.done()
        w.stop()
        return await asyncio.wait_for(task, 30)

    stats = asyncio.run(main())
    st = app.stats("q")
    assert stats.claimed_ahead > 0 and stats.released > 0 and 0 < len(done) < n
    assert len({i for i, _ in done}) == len(done) == stats.succeeded
    assert stats.claimed == stats.succeeded + stats.released
    assert st.leased == 0 and st.ready == n - len(done)
    app.close()


@pytest.mark.parametrize(
    "queue_kw", [{"max_concurrent": 100}, {"rate": 1e6}], ids=["max_concurrent", "rate"]
)
def test_nothing_is_claimed_ahead_where_held_tasks_would_hold_what_others_need(
    broker_url, queue_kw
):
    app, done = quick_app(broker_url, **queue_kw)
    n = 1500
    app.get_task("a").send_many([((i,), {}) for i in range(n)])
    stats = run_until_idle(app, concurrency=16)
    assert stats.claimed_ahead == 0
    assert stats.succeeded == n and len(done) == n
    app.close()


def test_plain_functions_go_to_the_lanes_and_async_ones_are_claimed_ahead(broker_url):
    """One queue, both kinds: a backlog of plain functions is claimed by the handler
    threads (never held), and the async backlog behind it is claimed ahead."""
    app, done = quick_app(broker_url)
    plain: list[int] = []

    @app.task(queue="q", name="p")
    def p(i: int) -> None:
        plain.append(i)

    n = 1500
    p.send_many([((i,), {}) for i in range(n)])
    app.get_task("a").send_many([((i,), {}) for i in range(n)])
    stats = run_until_idle(app, concurrency=16)
    assert stats.lane_claims > 0 and stats.claimed_ahead > 0
    assert sorted(plain) == list(range(n)) and sorted(i for i, _ in done) == list(range(n))
    assert stats.succeeded == 2 * n and stats.claimed == 2 * n + stats.released
    assert app.stats("q").leased == 0
    app.close()


def test_tasks_of_several_milliseconds_are_still_claimed_ahead(broker_url):
    # their wall time includes waiting for the loop: 10 ms is what one INCR per task costs
    # at 64 slots on a slow moment, and claiming ahead must not switch off there
    app = App("ahead", broker=broker_url)
    app.queue("q")
    done: list[int] = []

    @app.task(queue="q", name="ms")
    async def ms(i: int) -> None:
        await asyncio.sleep(0.01)
        done.append(i)

    n = 600
    ms.send_many([((i,), {}) for i in range(n)])
    stats = run_until_idle(app, concurrency=32)
    assert stats.claimed_ahead > 0 and stats.succeeded == n == len(done)
    app.close()


def test_tasks_that_take_longer_are_not_claimed_ahead(broker_url):
    # held tasks must start soon: only a backlog of quick tasks (20 ms on average, waits
    # for the loop included) is claimed ahead, never one whose tasks would keep a held
    # batch waiting for as long as HOLD_MAX
    app = App("ahead", broker=broker_url)
    app.queue("q")
    done: list[int] = []

    @app.task(queue="q", name="slow")
    async def slow(i: int) -> None:
        await asyncio.sleep(ahead.HOLD_MAX)
        done.append(i)

    n = 200
    slow.send_many([((i,), {}) for i in range(n)])
    stats = run_until_idle(app, concurrency=32)
    assert stats.claimed_ahead == 0 and stats.succeeded == n == len(done)
    app.close()
