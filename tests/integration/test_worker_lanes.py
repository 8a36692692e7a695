"""Lanes (offload.worker.lanes), on every broker: while a backlog of plain-function tasks
waits, the handler threads claim, run and ack them. Every task still runs once, in every
mix with tasks the loop must start, under hooks, and through a drain."""

from __future__ import annotations

import asyncio
import logging
import threading
import time

import pytest

from offload import App, Retry, Worker
from offload.brokers import broker_from_url
from offload.hooks import Hooks
from offload.testing.apps import run_until_idle

from .test_redis_broker import own_server  # noqa: F401  (fixture)

pytestmark = pytest.mark.timeout(120)


def make_app(url: str, **queue_kw) -> App:
    app = App("lanes", broker=url)
    app.queue("q", **queue_kw)
    return app


def test_a_backlog_of_plain_tasks_runs_once_each_on_the_lanes(broker_url):
    app = make_app(broker_url)
    done: list[int] = []
    threads: set[str] = set()

    @app.task(queue="q", name="s")
    def s(i: int) -> None:
        done.append(i)
        threads.add(threading.current_thread().name)

    n = 3000
    s.send_many([((i,), {}) for i in range(n)])
    stats = run_until_idle(app, concurrency=8)
    assert sorted(done) == list(range(n))
    assert stats.succeeded == n and stats.claimed == n
    assert stats.lane_claims > 0  # the threads claimed (else this test proves nothing)
    assert all(t.startswith("offload-task") for t in threads)
    st = app.stats("q")
    assert (st.ready, st.leased, st.dead) == (0, 0, 0)
    app.close()


@pytest.mark.parametrize("concurrency", [32, 8, 1])
def test_the_next_batch_is_claimed_while_the_last_jobs_run(broker_url, concurrency):
    """A lane claims the next batch while up to half the slots' worth of jobs of the last
    are still queued (the other threads run them meanwhile); with one slot, only when the
    jobs ran out. Either way every task runs once."""
    app = make_app(broker_url)
    done: list[int] = []

    @app.task(queue="q", name="s")
    def s(i: int) -> None:
        done.append(i)

    n = 3000
    s.send_many([((i,), {}) for i in range(n)])
    stats = run_until_idle(app, concurrency=concurrency)
    assert sorted(done) == list(range(n))
    assert stats.succeeded == n and stats.claimed == n
    assert stats.lane_claims > 0
    if concurrency > 1:
        assert stats.lane_claims_ahead > 0
    else:  # one slot: never one free while a job is queued
        assert stats.lane_claims_ahead == 0
    st = app.stats("q")
    assert (st.ready, st.leased, st.dead) == (0, 0, 0)
    app.close()


def test_tasks_the_loop_must_start_are_handed_to_it(broker_url):
    """One backlog mixing what lanes run with what they must not: async handlers, a task
    with a timeout, one that fails (retried, then dead), one whose caller waits for its
    result. Each ends as it would without lanes."""
    app = make_app(broker_url, retry=Retry(limit=1, min_backoff=0.01, max_backoff=0.01))
    seen: dict[str, list] = {"s": [], "a": [], "slow": [], "bad": []}
    lock = threading.Lock()

    @app.task(queue="q", name="s")
    def s(i: int) -> int:
        with lock:
            seen["s"].append(i)
        return i * 2

    @app.task(queue="q", name="a")
    async def a(i: int) -> None:
        await asyncio.sleep(0)
        seen["a"].append(i)

    @app.task(queue="q", name="slow", timeout=5)
    def slow(i: int) -> None:
        with lock:
            seen["slow"].append(i)

    @app.task(queue="q", name="bad")
    def bad(i: int) -> None:
        with lock:
            seen["bad"].append(i)
        raise ValueError(f"bad {i}")

    calls = []
    for i in range(400):
        s.send(i)
        if i % 4 == 0:
            a.send(i)
            slow.send(i)
        if i % 50 == 0:
            bad.send(i)
        if i % 100 == 0:
            calls.append(s.send_with(args=(1000 + i,), result_ttl=60))
    stats = run_until_idle(app, concurrency=8)
    assert sorted(seen["s"]) == sorted([*range(400), *(1000 + i for i in range(0, 400, 100))])
    assert sorted(seen["a"]) == list(range(0, 400, 4))
    assert sorted(seen["slow"]) == list(range(0, 400, 4))
    assert sorted(seen["bad"]) == sorted([*range(0, 400, 50)] * 2)  # one retry each
    assert [h.result(timeout=10) for h in calls] == [2 * (1000 + i) for i in range(0, 400, 100)]
    assert stats.dead == 8 and stats.retried == 8
    assert {d.error.split(":")[0] for d in app.dead_letters("q")} == {"ValueError"}
    assert stats.lane_claims > 0
    app.close()


class _Counting(Hooks):
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.counts = {"claimed": 0, "started": 0, "succeeded": 0}
        self.threads: set[str] = set()

    def _count(self, what: str) -> None:
        with self.lock:
            self.counts[what] += 1
            self.threads.add(threading.current_thread().name)

    def claimed(self, claim) -> None:
        self._count("claimed")

    def started(self, info) -> None:
        self._count("started")

    def succeeded(self, info) -> None:
        self._count("succeeded")


class _ThreadSafeCounting(_Counting):
    thread_safe = True


@pytest.mark.parametrize("hooks_cls", [_Counting, _ThreadSafeCounting])
def test_hooks_see_every_task_and_run_on_threads_only_when_they_say_they_may(broker_url, hooks_cls):
    app = make_app(broker_url)

    @app.task(queue="q", name="s")
    def s(i: int) -> None:
        pass

    n = 1000
    s.send_many([((i,), {}) for i in range(n)])
    hooks = hooks_cls()

    async def main():
        w = Worker(app, queues=["q"], concurrency=8, burst=True, hooks=hooks)
        return await asyncio.wait_for(w.run(), 60)

    stats = asyncio.run(main())
    assert stats.succeeded == n
    assert hooks.counts == {"claimed": n, "started": n, "succeeded": n}
    if hooks_cls is _Counting:
        assert stats.lane_claims == 0
        assert hooks.threads == {threading.main_thread().name}  # all on the loop
    else:
        assert stats.lane_claims > 0
        assert any(t.startswith("offload-task") for t in hooks.threads)
    app.close()


def test_a_stop_during_the_lanes_loses_nothing(broker_url):
    app = make_app(broker_url)
    done: list[int] = []

    @app.task(queue="q", name="s")
    def s(i: int) -> None:
        time.sleep(0.001)
        done.append(i)

    n = 20_000  # more than 8 threads sleeping 1 ms each can run in the 0.5 s before the stop
    s.send_many([((i,), {}) for i in range(n)])

    async def main():
        w = Worker(app, queues=["q"], concurrency=8, grace=10)
        task = asyncio.ensure_future(w.run())
        await asyncio.sleep(0.5)
        w.stop()
        return await asyncio.wait_for(task, 30)

    stats = asyncio.run(main())
    st = app.stats("q")
    first = len(done)
    assert 0 < first < n and stats.lane_claims > 0
    assert len(set(done)) == first == stats.succeeded  # every acked one ran once
    assert st.leased == 0 and st.ready == n - first  # the rest are left, none lost
    rest = run_until_idle(app, concurrency=8)
    assert rest.succeeded == n - first and sorted(done) == list(range(n))
    app.close()


def test_a_handler_holding_every_thread_leaves_claiming_to_the_loop(broker_url):
    """Lanes claim only when a thread runs out of jobs. When every thread is held by a
    long handler, the loop must see free slots and claim for them itself."""
    app = make_app(broker_url)
    release = threading.Event()
    done: list[int] = []

    @app.task(queue="q", name="hold")
    def hold() -> None:
        release.wait(20)

    @app.task(queue="q", name="s")
    def s(i: int) -> None:
        done.append(i)
        if len(done) == 200:
            release.set()

    for _ in range(2):
        hold.send()
    s.send_many([((i,), {}) for i in range(200)])
    t0 = time.monotonic()
    stats = run_until_idle(app, concurrency=4)
    assert sorted(done) == list(range(200)) and stats.succeeded == 202
    assert time.monotonic() - t0 < 15
    app.close()


def test_a_drain_that_meets_a_lane_claim_in_flight_looks_again_soon(broker_url, monkeypatch):
    """The drain's first look finds a lane's claim in flight (the lane lock taken), and the
    claim returns before the drain waits: nothing signals that, so the drain must look
    again soon on its own. It waited for the whole grace (30 s here) once in ten runs of
    the test above on a loaded machine."""
    app = make_app(broker_url)
    looks: list[float] = []
    halt = Worker._lanes_halt

    def in_flight_once(self) -> bool:
        looks.append(time.monotonic())
        return False if len(looks) == 1 else halt(self)

    monkeypatch.setattr(Worker, "_lanes_halt", in_flight_once)
    t0 = time.monotonic()
    run_until_idle(app, concurrency=4)
    assert len(looks) >= 2 and looks[1] - looks[0] < 0.5, looks
    assert time.monotonic() - t0 < 5
    app.close()


def test_a_backlog_over_two_queues_runs_once_each_on_the_lanes(broker_url):
    app = App("lanes", broker=broker_url)
    app.queue("a")
    app.queue("b")
    done: list[tuple[str, int]] = []

    @app.task(queue="a", name="ta")
    def ta(i: int) -> None:
        done.append(("a", i))

    @app.task(queue="b", name="tb")
    def tb(i: int) -> None:
        done.append(("b", i))

    n = 1500
    ta.send_many([((i,), {}) for i in range(n)])
    tb.send_many([((i,), {}) for i in range(n)])
    stats = run_until_idle(app, queues=["a", "b"], concurrency=8)
    assert sorted(done) == sorted([("a", i) for i in range(n)] + [("b", i) for i in range(n)])
    assert stats.succeeded == 2 * n and stats.lane_claims > 0
    app.close()


def _raw_redis(url: str):
    import redis

    return redis.Redis.from_url(url.split("?", 1)[0])


@pytest.mark.parametrize("broker_kind", ["redis"])
def test_lanes_go_on_when_redis_forgets_its_scripts(broker_url):
    """A lane's pipelined ack and claim meet NOSCRIPT (SCRIPT FLUSH, a restarted server):
    the scripts are loaded again and nothing is lost or run twice."""
    app = make_app(broker_url)
    done: list[int] = []
    raw = _raw_redis(broker_url)

    @app.task(queue="q", name="s")
    def s(i: int) -> None:
        done.append(i)
        if i % 500 == 250:
            raw.script_flush()

    n = 3000
    s.send_many([((i,), {}) for i in range(n)])
    stats = run_until_idle(app, concurrency=8)
    assert sorted(done) == list(range(n))
    assert stats.lane_claims > 0 and stats.succeeded == n
    app.close()


@pytest.mark.parametrize("broker_kind", ["redis"])
def test_a_calls_result_reaches_its_caller_while_the_loop_is_busy(broker_url):
    """A plain task's result is stored by the thread that ran it: its caller gets it while
    the worker's event loop is held by another (badly behaved, blocking) handler."""
    app = make_app(broker_url)
    go = threading.Event()

    @app.task(queue="q", name="quick")
    def quick() -> int:
        go.wait(10)
        return 42

    @app.task(queue="q", name="hog")
    async def hog() -> None:
        go.set()
        time.sleep(1.5)  # holds the event loop

    got: list[tuple[int, float]] = []

    def caller() -> None:
        value = quick.call_with(timeout=10)
        got.append((value, time.monotonic()))

    t = threading.Thread(target=caller)
    t.start()
    deadline = time.monotonic() + 5
    while app.stats("q").ready < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    hog.send()

    async def main():
        w = Worker(app, queues=["q"], concurrency=4, burst=True)
        return await asyncio.wait_for(w.run(), 30)

    runner = threading.Thread(target=lambda: asyncio.run(main()))
    runner.start()
    assert go.wait(10)
    released = time.monotonic()
    t.join(10)
    runner.join(30)
    [(value, at)] = got
    assert value == 42
    assert at - released < 1.0  # not held back until the loop is free again (1.5 s)
    app.close()


def test_a_stop_while_a_lane_claims_waits_for_that_claim(broker_url, monkeypatch):
    # A drain that found no task running while a lane's claim was in its round trip used
    # to end at once: the claimed batch then ran after the worker had counted and flushed,
    # so it was neither counted nor acked (and ran a second time later).
    app = make_app(broker_url)
    done: list[int] = []

    @app.task(queue="q", name="s")
    def s(i: int) -> None:
        done.append(i)

    n = 5_000
    s.send_many([((i,), {}) for i in range(n)])
    cls = type(broker_from_url(broker_url))
    real = cls.claim_blocking
    holding, release = threading.Event(), threading.Event()

    def slow_claim(self, queues, limit, acks=None):
        if acks is not None and not holding.is_set():  # a lane's claim (not the loop's)
            holding.set()
            release.wait(10)  # the worker is told to stop while this claim is out
        return real(self, queues, limit) if acks is None else real(self, queues, limit, acks)

    monkeypatch.setattr(cls, "claim_blocking", slow_claim)

    async def main():
        w = Worker(app, queues=["q"], concurrency=8, grace=10)
        task = asyncio.ensure_future(w.run())
        assert await asyncio.get_running_loop().run_in_executor(None, holding.wait, 10)
        w.stop()
        await asyncio.sleep(0.3)  # a drain that does not wait for the claim ends meanwhile
        release.set()
        return await asyncio.wait_for(task, 30)

    stats = asyncio.run(main())
    st = app.stats("q")
    assert stats.lane_claims > 0 and 0 < len(done) < n
    assert len(set(done)) == len(done) == stats.succeeded == stats.claimed
    assert st.leased == 0 and st.ready == n - len(done)
    app.close()


def _run_through_outage(app: App, n: int, outage) -> tuple[list[int], int, object]:
    """A backlog of ``n`` plain tasks on the lanes; ``outage()`` (on a thread) once they
    run; then until every task ran. Returns what ran, the lane claims before the outage
    and the worker's stats."""
    done: list[int] = []

    @app.task(queue="q", name="s")
    def s(i: int) -> None:
        time.sleep(0.0005)
        done.append(i)

    s.send_many([((i,), {}) for i in range(n)])

    async def main():
        w = Worker(app, queues=["q"], concurrency=8, grace=10)
        task = asyncio.ensure_future(w.run())
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30
        while (len(done) < 300 or not w.stats.lane_claims) and loop.time() < deadline:
            await asyncio.sleep(0.01)
        before = w.stats.lane_claims
        assert before and len(done) < n, "the outage must come while the lanes run"
        await loop.run_in_executor(None, outage)
        deadline = loop.time() + 60
        while len(set(done)) < n and loop.time() < deadline and not task.done():
            await asyncio.sleep(0.05)
        w.stop()
        return before, await asyncio.wait_for(task, 30)

    before, stats = asyncio.run(main())
    return done, before, stats


@pytest.mark.slow
def test_lanes_go_on_after_a_redis_restart(own_server, caplog):  # noqa: F811
    # Redis goes away while handler threads claim for themselves: their claims and acks
    # fail, claiming goes back to the loop (which backs off until the server is back),
    # and the lanes start again on the backlog that is left. Nothing is lost.
    app = make_app(f"redis://127.0.0.1:{own_server.port}/0?prefix=lanes", lease=2.0)

    def restart():
        own_server.stop()
        time.sleep(0.5)
        own_server.start()

    n = 6000
    with caplog.at_level(logging.WARNING, logger="offload.worker"):
        done, before, stats = _run_through_outage(app, n, restart)
    assert "broker unreachable" in caplog.text  # the worker met the outage
    assert set(done) == set(range(n))  # at least once each (a lease may run out meanwhile)
    assert stats.lane_claims > before  # the lanes ran again after the restart
    assert app.stats("q").ready == app.stats("q").leased == 0
    app.close()


@pytest.mark.slow
def test_lanes_go_on_after_postgres_backends_are_killed(tmp_path):
    import psycopg

    from tests.conftest import POSTGRES_URL, _drop_pg_schema, make_url

    base = make_url("postgres", tmp_path)
    name = "offload_lanes_" + base.rsplit("schema=", 1)[1]
    app = make_app(f"{base}&application_name={name}", lease=2.0)

    killed = []

    def terminate():
        with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
            killed.append(
                conn.execute(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE application_name = %s",
                    (name,),
                ).fetchone()[0]
            )

    n = 4000
    try:
        done, before, stats = _run_through_outage(app, n, terminate)
        assert killed[0] >= 2  # the lanes' connection and the loop's (a silent reconnect)
        assert set(done) == set(range(n))
        assert stats.lane_claims > before
        st = app.stats("q")
        assert st.ready == st.leased == 0
        app.close()
    finally:
        _drop_pg_schema(base)
