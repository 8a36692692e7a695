"""Every step of a call keeps the caller's deadline, not only the wait for the result:
starting the results listener and sending the task give up at the deadline too, so a
broker that is slow or does not answer at all gives DeadlineExceeded on time, from
blocking and from async code, instead of blocking for as long as its socket allows."""

from __future__ import annotations

import asyncio
import socket
import sqlite3
import time

import pytest

from offload import App, BrokerUnavailable, DeadlineExceeded

from .conftest import ThreadWorker, load_app

TIMEOUT = 0.3
SLACK = 0.15  # a loaded 2-core machine's scheduling, well under any broker timeout


def _app(url: str) -> App:
    app = App("deadlines", url, call_timeout=30.0)
    app.queue("q")

    @app.task(queue="q", name="deadlines.noop")
    def noop() -> None: ...

    return app


def _timed_calls(app: App, *, expect: type[Exception], match: str = "") -> None:
    noop = app.get_task("deadlines.noop")
    started = time.monotonic()
    with pytest.raises(expect, match=match):
        noop.call_with(timeout=TIMEOUT)
    took = time.monotonic() - started
    assert took < TIMEOUT + SLACK, f"a blocking call returned after {took:.2f}s"
    started = time.monotonic()
    with pytest.raises(expect, match=match):
        asyncio.run(noop.call_with_async(timeout=TIMEOUT))
    took = time.monotonic() - started
    assert took < TIMEOUT + SLACK, f"an async call returned after {took:.2f}s"


@pytest.fixture
def silent_port():
    """A loopback port that accepts connections and never answers: a hung server."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    yield sock.getsockname()[1]
    sock.close()


@pytest.mark.parametrize("scheme", ["redis", "postgresql"])
def test_a_broker_that_never_answers_gives_deadline_exceeded_on_time(silent_port, scheme):
    url = {
        "redis": f"redis://127.0.0.1:{silent_port}/0",
        "postgresql": f"postgresql://postgres@127.0.0.1:{silent_port}/test",
    }[scheme]
    app = _app(url)
    _timed_calls(app, expect=DeadlineExceeded, match="slow or unreachable")
    # the listener is still trying: the next call waits no longer than its own deadline
    _timed_calls(app, expect=DeadlineExceeded, match="slow or unreachable")


def test_a_closed_port_fails_at_once_and_says_so():
    """Nothing listens: the refusal is immediate, so the caller hears it (not a timeout)."""
    app = _app("redis://127.0.0.1:1/0")
    _timed_calls(app, expect=BrokerUnavailable, match="127.0.0.1:1")


def test_a_send_blocked_by_a_locked_database_gives_up_at_the_deadline(tmp_path):
    """The listener is up; then another process holds SQLite's write lock for longer than
    the deadline (the broker would wait 10 s for it): the send gives up at the deadline."""
    path = tmp_path / "broker.db"
    app = load_app(f"sqlite:///{path}?busy_timeout=10000", tmp_path / "sink.log")
    try:
        import tests.calls.callapp as callapp

        with ThreadWorker(app, queues=["search"]):
            assert callapp.echo.call_with(args=(1,), timeout=5) == 1  # listener up
        holder = sqlite3.connect(path, isolation_level=None)
        holder.execute("BEGIN EXCLUSIVE")
        try:
            for run in (
                lambda: callapp.echo.call_with(args=(2,), timeout=TIMEOUT),
                lambda: asyncio.run(callapp.echo.call_with_async(args=(2,), timeout=TIMEOUT)),
            ):
                started = time.monotonic()
                with pytest.raises(DeadlineExceeded, match="sending the task"):
                    run()
                took = time.monotonic() - started
                assert took < TIMEOUT + SLACK, f"the call returned after {took:.2f}s"
        finally:
            holder.execute("ROLLBACK")
            holder.close()
    finally:
        app.close()
