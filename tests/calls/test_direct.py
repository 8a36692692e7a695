"""A blocking call on Redis sends the task and waits for its result on the calling thread,
one write on that thread's connection, with a reply channel of the thread's own
(``call_blocking``). These tests hold it to the contract the sender and listener threads
kept: every step within the deadline (connecting, sending, waiting) even when the server
stops answering, one caller's result never another's (a result that comes after its
caller gave up is not taken by the thread's next call), and a server that lost its
scripts costs nothing but a reload."""

from __future__ import annotations

import concurrent.futures
import contextlib
import gc
import shutil
import socket
import subprocess
import threading
import time
from urllib.parse import urlsplit, urlunsplit

import pytest
import redis

from offload import App, BrokerUnavailable, DeadlineExceeded
from offload.replies import mailbox
from tests.conftest import _drop_redis_prefix, make_url

from .conftest import ThreadWorker

TIMEOUT = 0.3
SLACK = 0.15  # a loaded 2-core machine's scheduling, well under any broker timeout


def _app(url: str) -> App:
    app = App("direct", url, call_timeout=30.0)
    app.queue("q")

    @app.task(queue="q", name="direct.echo")
    def echo(value: object) -> object:
        return value

    @app.task(queue="q", name="direct.reply_to")
    def reply_to() -> str:
        from offload import current_task

        return current_task().headers["reply-to"]

    @app.task(queue="q", name="direct.slow")
    def slow(seconds: float, value: object) -> object:
        time.sleep(seconds)
        return value

    return app


@pytest.fixture
def redis_url(tmp_path):
    """A fresh prefix on the Redis server (call_blocking is Redis's, single server)."""
    url = make_url("redis", tmp_path)
    yield url
    _drop_redis_prefix(url)


class FreezingProxy:
    """A TCP forwarder to the Redis server that can stop forwarding (a hung server: its
    connections stay open and nothing comes back) and drop its connections (so the next
    connect's handshake hangs too)."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.frozen = threading.Event()
        self.conns: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.upstream)
            self.conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                if not self.frozen.is_set():
                    dst.sendall(data)

    def drop(self) -> None:
        for c in self.conns:
            with contextlib.suppress(OSError):
                c.shutdown(socket.SHUT_RDWR)
            c.close()
        self.conns = []

    def close(self) -> None:
        self.drop()
        self.sock.close()


def _on_time(fn, match: str) -> None:
    started = time.monotonic()
    with pytest.raises(DeadlineExceeded, match=match):
        fn()
    took = time.monotonic() - started
    assert took < TIMEOUT + SLACK, f"the call returned after {took:.2f}s"


def test_every_step_keeps_the_deadline_when_the_server_hangs(redis_url):
    parts = urlsplit(redis_url)
    proxy = FreezingProxy((parts.hostname or "127.0.0.1", parts.port or 6379))
    netloc = parts.netloc.rpartition("@")[0]  # credentials, if any, then the proxy
    netloc = f"{netloc}@" if netloc else ""
    url = urlunsplit(parts._replace(netloc=f"{netloc}127.0.0.1:{proxy.port}"))
    app = _app(url).open()
    try:
        echo = app.get_task("direct.echo")
        assert mailbox(app.registry).direct() is not None  # open and declared: direct
        # no worker: the send is answered, the wait ends at the deadline
        _on_time(lambda: echo.call_with(args=(1,), timeout=TIMEOUT), "no result within")
        proxy.frozen.set()  # the thread's connection is up; the server stops answering
        _on_time(lambda: echo.call_with(args=(2,), timeout=TIMEOUT), "sending the task")
        proxy.drop()  # a new connection: its handshake is never answered either
        _on_time(lambda: echo.call_with(args=(3,), timeout=TIMEOUT), "sending the task")
        _on_time(lambda: echo.call_with(args=(4,), timeout=TIMEOUT), "sending the task")
    finally:
        proxy.frozen.clear()
        app.close()
        proxy.close()


def test_each_thread_waits_on_its_own_channel(redis_url):
    app = _app(redis_url).open()
    try:
        reply_to = app.get_task("direct.reply_to")
        with ThreadWorker(app, queues=["q"]):
            box = mailbox(app.registry)
            mine = reply_to.call_with(timeout=10)
            assert mine == box.thread_channel() and mine.startswith(box.channel + "-")
            assert reply_to.call_with(timeout=10) == mine  # the same thread: the same one
            with concurrent.futures.ThreadPoolExecutor(4) as pool:
                theirs = set(pool.map(lambda _: reply_to.call_with(timeout=10), range(40)))
            assert len(theirs) == 4 and mine not in theirs
            # the pool's threads have ended: their connections are closed with them
            gc.collect()
            assert len(app.registry.facade()._direct_calls()._conns) == 1  # this thread's
    finally:
        app.close()


def test_a_result_that_comes_after_its_caller_gave_up_is_not_taken_by_the_next_call(
    redis_url,
):
    app = _app(redis_url).open()
    try:
        slow, echo = app.get_task("direct.slow"), app.get_task("direct.echo")
        with ThreadWorker(app, queues=["q"]):
            assert echo.call_with(args=(0,), timeout=10) == 0
            with pytest.raises(DeadlineExceeded):
                slow.call_with(args=(0.5, "late"), timeout=0.2)
            time.sleep(0.6)  # the late result is in this thread's list by now
            assert echo.call_with(args=("mine",), timeout=10) == "mine"
            # and one that lands while the next call waits is passed over too
            with pytest.raises(DeadlineExceeded):
                slow.call_with(args=(0.3, "late again"), timeout=0.1)
            assert slow.call_with(args=(0.4, "mine again"), timeout=10) == "mine again"
    finally:
        app.close()


@pytest.fixture
def own_redis(tmp_path):
    """A redis-server of this test's own: SCRIPT FLUSH is server-wide."""
    exe = shutil.which("redis-server")
    if not exe:
        pytest.skip("redis-server not installed")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [exe, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(tmp_path), "--save", ""],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                if redis.Redis(port=port).ping():
                    break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)
        yield OwnRedis(port, proc)
    finally:
        proc.terminate()
        proc.wait(timeout=10)


class OwnRedis:
    def __init__(self, port: int, proc: subprocess.Popen) -> None:
        self.port, self.proc = port, proc

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


def test_a_server_that_lost_its_scripts_answers_the_next_call(own_redis):
    app = _app(f"redis://127.0.0.1:{own_redis.port}/0?prefix=direct").open()
    raw = redis.Redis(port=own_redis.port)
    try:
        echo = app.get_task("direct.echo")
        with ThreadWorker(app, queues=["q"]):
            assert echo.call_with(args=(1,), timeout=10) == 1
            for value in (2, 3):  # the call's enqueue and the worker's put_result reload
                raw.script_flush()
                assert echo.call_with(args=(value,), timeout=10) == value
    finally:
        raw.close()
        app.close()


def test_a_server_that_went_away_fails_at_once_and_says_so(own_redis):
    """The thread's connection was open when the server stopped: the call hears of it at
    once (BrokerUnavailable, nothing sent), not at its deadline."""
    app = _app(f"redis://127.0.0.1:{own_redis.port}/0?prefix=direct").open()
    try:
        echo = app.get_task("direct.echo")
        with ThreadWorker(app, queues=["q"]):
            assert echo.call_with(args=(1,), timeout=10) == 1
            own_redis.stop()
            for _ in range(2):  # the dropped connection, then a refused one
                started = time.monotonic()
                with pytest.raises(BrokerUnavailable, match=f"127.0.0.1:{own_redis.port}"):
                    echo.call_with(args=(2,), timeout=5)
                assert time.monotonic() - started < 1.0
    finally:
        app.close()
