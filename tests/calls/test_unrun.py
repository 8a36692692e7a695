"""A called task that a worker dead-letters before running it gives its caller
RemoteError with the reason at once, not DeadlineExceeded at the end of its timeout: bad
arguments, a payload the worker cannot decode, a task function no worker has, and a retry
policy already exhausted by workers that died while holding it."""

from __future__ import annotations

import asyncio
import concurrent.futures
import time

import msgspec
import pytest

from offload import App, RemoteError, Retry
from offload.brokers import NewTask, broker_from_url
from offload.calls import REPLY_TO, RESULT_TTL, mailbox
from offload.core import envelope as _env
from offload.task import TaskHandle

from .conftest import ThreadWorker, lines

TIMEOUT = 8.0  # what the caller would wait for before this was fixed
PROMPT = 3.0  # the answer comes well before it


@pytest.fixture
def m(calls_app):
    import tests.calls.callapp as callapp

    return callapp


@pytest.fixture
def caller(broker_url):
    """Another deployment of the same App ("calls"), whose code declares other task
    functions than the workers have (an older or newer release)."""
    app = App("calls", broker_url, call_timeout=TIMEOUT)
    app.queue("search")
    app.queue("strict", retry=Retry(limit=0))
    yield app
    app.close()


def _prompt(started: float) -> None:
    took = time.monotonic() - started
    assert took < PROMPT, f"the caller heard after {took:.1f}s (its timeout: {TIMEOUT}s)"


def test_arguments_the_worker_rejects_give_remote_error(calls_app, caller, m):
    @caller.task(queue="search", name=m.score.name)  # the worker's takes a Hit
    def score(hit: dict) -> float: ...

    with ThreadWorker(calls_app, queues=["search"]):
        assert m.score.call(m.Hit("a", 0.5)) == 0.5
        started = time.monotonic()
        with pytest.raises(RemoteError) as err:
            score.call({"no title": 1})
        _prompt(started)
        assert err.value.type == "BadArguments" and "'hit'" in err.value.message
        started = time.monotonic()
        with pytest.raises(RemoteError, match="BadArguments"):
            asyncio.run(score.call_async({"no title": 1}))
        _prompt(started)


def test_a_task_function_no_worker_has_gives_remote_error(calls_app, caller):
    @caller.task(queue="strict", name="tests.calls.callapp.not_deployed")
    def not_deployed() -> None: ...

    # unknown_grace=0: no newer deploy is coming to run it (else it waits that long)
    with ThreadWorker(calls_app, queues=["strict"], unknown_grace=0):
        started = time.monotonic()
        with pytest.raises(RemoteError, match="unknown task function") as err:
            not_deployed.call()
        _prompt(started)
        assert "not_deployed" in err.value.message


def test_a_payload_the_worker_cannot_decode_gives_remote_error(calls_app, m):
    """A newer sender's envelope: its arguments are unreadable here, its headers are not."""
    registry = calls_app.registry
    box = mailbox(registry)
    box.start()
    task_id = _env.new_id()
    headers = {
        REPLY_TO: box.channel,
        RESULT_TTL: "60.0",
        _env.DEADLINE: repr(time.time() + TIMEOUT),
    }
    env = _env.Envelope(
        v=99, id=task_id, task=m.echo.name, queue="search", args=[1], headers=headers, app="calls"
    )
    calls_app.registry.enqueue([NewTask(task_id, "search", msgspec.msgpack.encode(env))])
    handle = TaskHandle(task_id, "search", m.echo.name, None, registry)
    with ThreadWorker(calls_app, queues=["search"]):
        started = time.monotonic()
        with pytest.raises(RemoteError, match="envelope version 99 is newer") as err:
            handle.result(timeout=TIMEOUT)
        _prompt(started)
        assert "undecodable payload" in err.value.message


def test_a_retry_policy_exhausted_by_a_dead_worker_gives_remote_error(
    calls_app, m, broker_url, sink
):
    """The first worker claims the task and dies (its lease runs out); on queue "fragile"
    (no retries) the next claim dead-letters it without running it."""
    calls_app.open()  # declares "fragile" and its 0.3 s lease

    async def claim_and_die() -> None:
        b = broker_from_url(broker_url)
        await b.open()
        try:
            for _ in range(200):
                if await b.claim(["fragile"], 1):
                    return  # claimed, never acked: the lease runs out
                await asyncio.sleep(0.02)
            raise AssertionError("the called task never reached the queue")
        finally:
            await b.close()

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        called = pool.submit(m.fragile.call_with, args=("k",), timeout=TIMEOUT)
        asyncio.run(claim_and_die())
        time.sleep(0.4)  # past the dead worker's lease
        with ThreadWorker(calls_app, queues=["fragile"]):
            started = time.monotonic()
            with pytest.raises(RemoteError, match="retry policy exhausted"):
                called.result(timeout=TIMEOUT + 2)
            _prompt(started)
    assert "fragile k" not in lines(sink), "an exhausted task must not run"
