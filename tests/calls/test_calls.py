"""Calls with results and deadlines, on every broker: values round-trip, remote errors,
deadlines kept to the millisecond, expired tasks dropped unrun, two hops in two worker
processes, and a thousand concurrent callers from threads and from asyncio tasks."""

from __future__ import annotations

import asyncio
import concurrent.futures
import time

import pytest

from offload import BadArguments, DeadlineExceeded, PayloadError, RemoteError, chan

from .conftest import ThreadWorker, lines, wait_for


@pytest.fixture
def m(calls_app):
    import tests.calls.callapp as callapp

    return callapp


def test_values_round_trip(calls_app, m):
    with ThreadWorker(calls_app, queues=["search"]):
        for value in m.VALUES:
            got = m.echo.call(value)
            assert got == value and type(got) is type(value), (value, got)
        assert m.hits.call("shoes", limit=2) == [m.Hit("shoes-0", 1.0), m.Hit("shoes-1", 0.5)]
        assert asyncio.run(m.aecho.call_async([1, (2, 3)])) == [1, (2, 3)]


def test_remote_error_carries_type_message_and_traceback(calls_app, m):
    with ThreadWorker(calls_app, queues=["strict", "search"]):
        with pytest.raises(RemoteError) as err:
            m.boom.call("the index is gone")
        assert err.value.type == "ValueError"
        assert "the index is gone" in err.value.message
        assert "raise ValueError(message)" in err.value.traceback
        with pytest.raises(RemoteError) as err:
            m.refuse.call("not today")
        assert err.value.type == "Fail" and "not today" in err.value.message
        with pytest.raises(RemoteError) as err:
            m.unsendable.call()
        assert err.value.type == "offload.errors.PayloadError"


def test_a_retried_failure_keeps_the_caller_waiting(calls_app, m):
    with ThreadWorker(calls_app, queues=["flaky"]):
        assert m.flaky.call_with(args=("k",), timeout=10) == "ok on 2"
        with pytest.raises(RemoteError, match="no luck"):
            m.always_fails.call_with(args=("k",), timeout=10)


@pytest.mark.parametrize("task", ["slow", "aslow"])
def test_deadline_exceeded_on_time_while_the_task_runs(calls_app, m, task):
    fn = getattr(m, task)
    with ThreadWorker(calls_app, queues=["search"]):
        m.echo.call(0)  # the listener and the worker are up
        for timeout in (0.2, 0.5):
            t0 = time.perf_counter()
            with pytest.raises(DeadlineExceeded, match="no result within its deadline"):
                fn.call_with(args=(2.0,), timeout=timeout)
            late = time.perf_counter() - t0 - timeout
            assert 0 <= late < 0.05, f"DeadlineExceeded {late * 1e3:.1f} ms after the deadline"
            t0 = time.perf_counter()
            with pytest.raises(DeadlineExceeded):
                asyncio.run(fn.call_with_async(args=(2.0,), timeout=timeout))
            late = time.perf_counter() - t0 - timeout
            assert 0 <= late < 0.05, f"async: {late * 1e3:.1f} ms after the deadline"
        # a context's deadline is the call's; one except catches both kinds
        ctx, cancel = chan.with_timeout(chan.background(), 0.2)
        with pytest.raises(chan.DeadlineExceeded):
            fn.call_with(args=(2.0,), context=ctx)
        cancel()


def test_a_task_claimed_after_its_deadline_is_not_run(calls_app, m, sink):
    with pytest.raises(DeadlineExceeded):
        m.marked.call_with(args=("late",), timeout=0.2)  # no worker yet
    m.marked.send("on-time")
    with ThreadWorker(calls_app, queues=["search"]):
        wait_for(lambda: "ran on-time" in lines(sink), what="the on-time task")
    assert "ran late" not in lines(sink), "a task past its deadline ran"
    assert calls_app.stats("search").ready == 0
    expired = {x.task: x.extra.get("expired", 0) for x in calls_app.metrics()}
    assert expired.get(m.marked.name) == 1, expired


def test_result_ttl_and_handle_result(calls_app, m):
    h = m.echo.send_with(args=({"x": 1},), result_ttl=30)
    with ThreadWorker(calls_app, queues=["search"]):
        assert h.result(timeout=5) == {"x": 1}
        assert asyncio.run(h.result_async(timeout=5)) == {"x": 1}  # read again: still stored
        plain = m.echo.send(1)
        with pytest.raises(DeadlineExceeded):
            plain.result(timeout=0.3)  # not stored: nobody asked for it


def test_bad_input_fails_at_the_caller(calls_app, m):
    with pytest.raises(BadArguments, match="hits"):
        m.hits.call(q="x", nope=1)
    with pytest.raises(PayloadError, match="value"):
        m.echo.call(object())
    with pytest.raises(BadArguments, match="timeout"):
        m.echo.call_with(args=(1,), timeout=-1)
    with pytest.raises(BadArguments, match="result_ttl"):
        m.echo.send_with(args=(1,), result_ttl=0)
    assert calls_app.stats("search").ready == 0, "a refused call must send nothing"


def test_a_thousand_concurrent_calls_from_threads_and_tasks(calls_app, m):
    with ThreadWorker(calls_app, queues=["search"], concurrency=64):
        m.aecho.call(0)

        def caller(t: int) -> list[tuple[int, object]]:
            return [
                (t * 100 + i, m.aecho.call_with(args=(t * 100 + i,), timeout=60)) for i in range(20)
            ]

        with concurrent.futures.ThreadPoolExecutor(50) as pool:
            got = [pair for part in pool.map(caller, range(50)) for pair in part]
        assert len(got) == 1000 and all(sent == back for sent, back in got)

        async def many() -> list[object]:
            async def one(i: int) -> object:
                return (i, await m.aecho.call_with_async(args=(i,), timeout=60))

            results = []
            for _ in range(2):
                results += await asyncio.gather(*(one(i) for i in range(500)))
            return results

        got = asyncio.run(many())
        assert len(got) == 1000 and all(sent == back for sent, back in got)


def test_two_hops_in_two_processes_inherit_the_deadline(calls_app, m, worker_procs):
    front_worker = worker_procs("--queues", "front")
    search_worker = worker_procs("--queues", "search")
    deadline = time.time() + 30
    got = None
    while got is None:
        try:
            got = m.front.call_with(args=("shoes",), timeout=5.0)
        except DeadlineExceeded:
            assert time.time() < deadline, "the worker processes did not start"
    assert 0 < got["inner_left"] <= got["front_left"] <= 5.0, got
    assert got["pid"] == front_worker.pid and search_worker.poll() is None
