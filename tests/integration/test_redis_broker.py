"""Redis-specific behaviour of the Redis broker, on the machine's real Redis.

The semantics every broker shares are in tests/conformance; these tests cover what only
Redis has: scripts called by SHA, the hash-tag key layout, records damaged by hand,
blocking on the server, and connection failures.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable

import msgspec
import pytest

from offload.brokers import Lease, NewTask, broker_from_url
from offload.core.envelope import new_id
from offload.core.policy import QueuePolicy
from offload.errors import (
    BrokerFull,
    BrokerRefused,
    BrokerUnavailable,
    BrokerURLError,
    ConfigError,
)
from tests.conftest import REDIS_URL, make_url

redis = pytest.importorskip("redis")
from redis.cluster import key_slot  # noqa: E402

from offload.brokers.redis import RedisBroker  # noqa: E402
from offload.brokers.redis.scripts import QueueKeys, metrics_key  # noqa: E402


@pytest.fixture
def url(tmp_path):
    u = make_url("redis", tmp_path)
    yield u
    from tests.conftest import _drop_redis_prefix

    _drop_redis_prefix(u)


@pytest.fixture
async def broker(url):
    b = broker_from_url(url)
    await b.open()
    await b.declare([QueuePolicy("q", lease=5.0)])
    yield b
    await b.close()


@pytest.fixture
def raw():
    """A plain client on the configured test database (never a server-wide command)."""
    r = redis.Redis.from_url(REDIS_URL)
    yield r
    r.close()


def task(queue="q", payload=b"p", **kw) -> NewTask:
    return NewTask(new_id(), queue, payload, **kw)


async def test_scripts_reload_after_script_flush(own_server):
    # SCRIPT FLUSH is server-wide: on a server of this test's own only
    raw = redis.Redis(port=own_server.port)
    broker = broker_from_url(f"redis://127.0.0.1:{own_server.port}/0?prefix=flush")
    await broker.open()
    await broker.declare([QueuePolicy("q", lease=5.0)])
    assert await broker.enqueue([task()]) == [True]
    raw.script_flush()
    assert await broker.enqueue([task(), task()]) == [True, True]
    raw.script_flush()
    claimed = await broker.claim(["q"], 10)
    assert len(claimed) == 3
    raw.script_flush()
    await broker.ack([c.lease for c in claimed[:2]])
    raw.script_flush()
    assert broker.enqueue_blocking([task()]) == [True]
    raw.script_flush()
    assert broker.enqueue_blocking([task()]) == [True]
    stats = await broker.stats("q")
    assert (stats.ready, stats.leased) == (2, 1)
    await broker.close()
    raw.close()


async def test_every_key_of_a_queue_shares_one_slot(broker, raw):
    assert isinstance(broker, RedisBroker)
    keys = QueueKeys.of(broker.prefix, "q").keys
    assert len({key_slot(k.encode()) for k in keys}) == 1
    # and the keys the scripts really wrote are exactly those
    await broker.enqueue([task(name="n1"), task(delay=30)])
    c = await broker.claim(["q"], 1)
    await broker.dead_letter(c[0].lease, "boom", "tb")
    await broker.enqueue([task()])
    written = {k.decode() for k in raw.scan_iter(match=f"*{broker.prefix}:q*")}
    assert written and written <= set(keys)
    assert {key_slot(k.encode()) for k in written} == {key_slot(keys[0].encode())}
    other = QueueKeys.of(broker.prefix, "other").keys
    assert len({key_slot(k.encode()) for k in other}) == 1
    assert metrics_key(broker.prefix).startswith("{")


async def test_unreadable_records_are_dead_lettered_by_the_claim(broker, raw):
    keys = QueueKeys.of(broker.prefix, "q")
    k_due, k_tasks = keys.keys[1], keys.keys[3]
    good = task(payload=b"\x00\xffnot an envelope")  # opaque bytes: returned as they are
    assert await broker.enqueue([good]) == [True]
    # garbage written straight into the task hash, indexed as due before the good task
    raw.hset(k_tasks, "garbage", b"\xc1\xc1 not msgpack")
    raw.zadd(k_due, {"garbage": 1})
    # a record missing fields (three msgpack values instead of ten)
    raw.hset(k_tasks, "short", msgspec.msgpack.encode("r") + b"\x00\x00")
    raw.zadd(k_due, {"short": 2})
    # a record whose fields have the wrong types
    raw.hset(k_tasks, "typed", b"".join(msgspec.msgpack.encode(x) for x in [1] * 10))
    raw.zadd(k_due, {"typed": 3})
    # an index entry with no record at all
    raw.zadd(k_due, {"ghost": 4})

    claimed = await broker.claim(["q"], 10)
    assert [c.id for c in claimed] == [good.id]
    assert claimed[0].payload == good.payload
    dead = {d.id: d for d in await broker.dead_letters("q")}
    assert set(dead) == {"garbage", "short", "typed"}
    assert "not msgpack" in dead["garbage"].error
    assert dead["garbage"].payload == b"\xc1\xc1 not msgpack"
    assert "missing fields" in dead["short"].error
    assert "wrong type" in dead["typed"].error
    assert raw.zscore(k_due, "ghost") is None
    stats = await broker.stats("q")
    assert (stats.ready, stats.leased, stats.dead) == (0, 1, 3)
    # requeued, a buried record carries its raw bytes as an opaque payload
    assert await broker.requeue_dead("q", ["garbage"]) == 1
    again = await broker.claim(["q"], 10)
    assert [(c.id, c.payload) for c in again] == [("garbage", b"\xc1\xc1 not msgpack")]
    # ack/retry/extend on a record damaged while leased report a lost lease
    raw.hset(k_tasks, good.id, b"garbage")
    assert await broker.extend([claimed[0].lease]) == [None]
    assert await broker.retry(claimed[0].lease, 0, "x") is False
    await broker.ack([claimed[0].lease])
    assert await broker.delete("q", id="garbage") is True


async def test_wait_blocks_on_the_server(broker):
    cpu, t = time.process_time(), time.monotonic()
    await broker.wait(["q"], 0.5)
    elapsed, used = time.monotonic() - t, time.process_time() - cpu
    assert 0.45 <= elapsed < 1.0
    assert used < 0.05, f"wait() used {used:.3f}s of CPU: it polls"


async def test_wait_wakes_on_an_enqueue_from_another_process(broker, url):
    other = RedisBroker(url)

    def send_later():
        time.sleep(0.2)
        other.enqueue_blocking([task()])

    th = threading.Thread(target=send_later)
    t = time.monotonic()
    th.start()
    await broker.wait(["q", "q2"], 5)
    woke = time.monotonic() - t
    th.join()
    await other.close()
    assert 0.15 < woke < 0.3
    assert len(await broker.claim(["q"], 10)) == 1


async def test_wait_wakes_when_an_eta_comes_due(broker):
    await broker.enqueue([task(delay=0.3)])
    t = time.monotonic()
    while not await broker.claim(["q"], 1):
        await broker.wait(["q"], 5)
        assert time.monotonic() - t < 1
    # Redis's own BLPOP timeout ticks at 1/hz (100 ms); the broker must be sharper.
    assert 0.29 <= time.monotonic() - t < 0.33


async def test_wait_and_claim_honour_a_saturated_queue(broker):
    await broker.declare([QueuePolicy("mc", max_concurrent=1, lease=5.0)])
    await broker.enqueue([task("mc"), task("mc")])
    first = await broker.claim(["mc"], 10)
    assert len(first) == 1
    assert await broker.claim(["mc"], 10) == []

    async def ack_later():
        await asyncio.sleep(0.2)
        await broker.ack([first[0].lease])

    t = time.monotonic()
    acker = asyncio.create_task(ack_later())
    await broker.wait(["mc"], 3)
    await acker
    assert time.monotonic() - t < 0.5
    assert len(await broker.claim(["mc"], 10)) == 1


async def test_enqueue_is_idempotent_by_id(broker):
    t = task(name="once")
    assert await broker.enqueue([t, t]) == [True, True]
    assert await broker.enqueue([t]) == [True]
    assert broker.enqueue_blocking([t]) == [True]
    assert (await broker.stats("q")).ready == 1


async def test_enqueue_blocking_from_many_threads(broker):
    errors = []

    def send(n):
        try:
            for _ in range(n):
                assert broker.enqueue_blocking([task()]) == [True]
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=send, args=(200,)) for _ in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors
    assert (await broker.stats("q")).ready == 800


async def test_claims_are_spread_over_queues(broker):
    await broker.enqueue([task("a") for _ in range(10)] + [task("b") for _ in range(10)])
    got = await broker.claim(["a", "b"], 10)
    assert sorted(c.queue for c in got) == ["a"] * 5 + ["b"] * 5
    await broker.enqueue([task("c") for _ in range(3)])
    got = await broker.claim(["a", "c"], 10)  # c has 3: a gets what c leaves
    assert sorted(c.queue for c in got) == ["a"] * 5 + ["c"] * 3


async def test_connection_refused_is_broker_unavailable_quickly():
    b = RedisBroker("redis://127.0.0.1:1/0?prefix=nowhere")
    t = time.monotonic()
    with pytest.raises(BrokerUnavailable, match=r"127\.0\.0\.1:1\b"):
        await b.open()
    with pytest.raises(BrokerUnavailable, match=r"127\.0\.0\.1:1\b"):
        b.enqueue_blocking([task()])
    with pytest.raises(BrokerUnavailable, match="running"):
        await b.enqueue([task()])
    with pytest.raises(BrokerUnavailable):
        await b.stats("q")
    assert time.monotonic() - t < 2
    await b.close()


def test_url_options():
    b = RedisBroker("redis://127.0.0.1:6379/0?prefix=app1&socket_keepalive=true")
    assert b.prefix == "app1"
    assert not b.capabilities.cluster and not b.capabilities.inline
    assert RedisBroker("redis+cluster://127.0.0.1:7101").capabilities.cluster
    assert RedisBroker("redis://localhost").prefix == "offload"


@pytest.fixture
def own_server(tmp_path):
    """A redis-server of this test's own, with appendonly and fsync always, restartable."""
    import shutil
    import socket
    import subprocess

    exe = shutil.which("redis-server")
    if not exe:
        pytest.skip("redis-server not installed")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    args = [exe, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(tmp_path),
            "--appendonly", "yes", "--appendfsync", "always", "--save", ""]  # fmt: skip

    class Server:
        proc = None

        def start(self):
            self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                try:
                    if redis.Redis(port=port).ping():
                        return
                except redis.ConnectionError:
                    time.sleep(0.02)
            raise RuntimeError("redis-server did not start")

        def stop(self):
            self.proc.terminate()
            self.proc.wait(10)

    srv = Server()
    srv.port = port
    srv.start()
    yield srv
    if srv.proc.poll() is None:
        srv.stop()


async def test_server_restart(own_server):
    url = f"redis://127.0.0.1:{own_server.port}/0?prefix=restart"
    b = broker_from_url(url)
    await b.open()
    sent = [task() for _ in range(50)]
    assert await b.enqueue(sent[:25]) == [True] * 25
    for t in sent[25:]:
        assert b.enqueue_blocking([t]) == [True]
    leased = await b.claim(["q"], 5)

    own_server.stop()
    t0 = time.monotonic()
    with pytest.raises(BrokerUnavailable, match=str(own_server.port)):
        await b.enqueue([task()])
    with pytest.raises(BrokerUnavailable):
        b.enqueue_blocking([task()])
    with pytest.raises(BrokerUnavailable):
        await b.claim(["q"], 10)
    with pytest.raises(BrokerUnavailable):
        await b.wait(["q"], 1)
    assert time.monotonic() - t0 < 2, "an outage must be reported quickly"

    own_server.start()  # appendonly + fsync always: every enqueue that returned survives
    # the first call after the restart reconnects (and reloads the scripts) by itself
    assert b.enqueue_blocking([task()]) == [True]
    assert await b.enqueue([task()]) == [True]
    stats = await b.stats("q")
    assert (stats.ready + stats.leased, stats.leased) == (52, 5)
    await b.ack([c.lease for c in leased])
    got = await b.claim(["q"], 100)
    assert {c.id for c in got} >= {t.id for t in sent} - {c.id for c in leased}
    await b.close()


async def test_a_cancelled_wait_keeps_its_connection_and_hands_on_its_wake_up(own_server):
    url = f"redis://127.0.0.1:{own_server.port}/0?prefix=cancel"
    a, b = broker_from_url(url), broker_from_url(url)
    await a.open()
    await b.open()
    raw = redis.Redis(port=own_server.port)
    try:

        def opened_and_open() -> tuple[int, int]:
            return (
                raw.info("stats")["total_connections_received"],
                raw.info("clients")["connected_clients"],
            )

        opened0, open0 = opened_and_open()
        for _ in range(20):  # a worker stops waiting whenever one of its slots frees
            w = asyncio.create_task(a.wait(["q"], 5))
            await asyncio.sleep(0.01)
            w.cancel()
            await asyncio.gather(w, return_exceptions=True)
        await asyncio.sleep(0.2)  # the abandoned BLPOPs' clean-ups end
        opened, still_open = opened_and_open()
        # No cancelled wait dropped its connection: every one opened meanwhile (a wait that
        # found the blocking connection busy with a clean-up borrows one from the pool; how
        # many depends on the machine's speed) is still open, kept for reuse.
        assert opened - opened0 == still_open - open0, (opened - opened0, still_open - open0)
        assert opened - opened0 <= 10

        first = asyncio.create_task(a.wait(["q"], 5))
        await asyncio.sleep(0.05)
        second = asyncio.create_task(b.wait(["q"], 5))
        await asyncio.sleep(0.05)
        # the token goes to the longest-blocked client, `first`, which is cancelled at once
        raw.lpush(QueueKeys.of("cancel", "q").wake, "1")
        first.cancel()
        t = time.monotonic()
        await asyncio.wait_for(second, 1)
        assert time.monotonic() - t < 0.3
        await asyncio.gather(first, return_exceptions=True)
    finally:
        raw.close()
        await a.close()
        await b.close()


def _connections(raw: redis.Redis) -> Callable[[], tuple[int, int]]:
    """Connections opened since now, and how many more are open than now."""
    opened0 = raw.info("stats")["total_connections_received"]
    open0 = raw.info("clients")["connected_clients"]

    def counts() -> tuple[int, int]:
        return (
            raw.info("stats")["total_connections_received"] - opened0,
            raw.info("clients")["connected_clients"] - open0,
        )

    return counts


async def _cancelled_while_paused(
    raw: redis.Redis, b: RedisBroker, timeout: float, pause: float
) -> None:
    """A wait of ``b`` started while the server holds every command for ``pause``
    seconds, cancelled 0.1 s in; returns once the pause is over and what the wait sent
    was answered (to a task of its own, if the fix holds)."""
    raw.client_pause(int(pause * 1000), all=True)
    w = asyncio.create_task(b.wait(["q"], timeout))
    await asyncio.sleep(0.1)
    assert not w.done()
    w.cancel()
    await asyncio.gather(w, return_exceptions=True)
    await asyncio.sleep(pause + 0.1)


async def test_a_wait_cancelled_during_its_peek_keeps_the_connection(own_server):
    # The peek (which parks the worker) runs before the BLPOP on a pooled connection; a
    # cancel landing while its reply is due must not cost that connection.
    url = f"redis://127.0.0.1:{own_server.port}/0?prefix=peek"
    a = broker_from_url(url)
    await a.open()
    raw = redis.Redis(port=own_server.port)
    try:
        await a.stats("q")  # the pool has a connection
        counts = _connections(raw)
        await _cancelled_while_paused(raw, a, 5, 0.3)  # the peek's reply did not come
        await a.stats("q")
        opened, still_open = counts()
        assert opened == still_open == 0, (opened, still_open)
    finally:
        raw.close()
        await a.close()


async def test_a_wait_cancelled_while_its_borrowed_connection_connects_keeps_it(own_server):
    # A wait that finds the blocking connection busy borrows one from the pool; a cancel
    # landing while that one is still in its handshake must not put it back in the pool
    # with the server's reply unread (its next user would drop it and connect again).
    url = f"redis://127.0.0.1:{own_server.port}/0?prefix=borrow"
    a = broker_from_url(url)
    a.on_handoff = lambda claimed: False  # a worker's broker: a claim of nothing parks it
    await a.open()
    raw = redis.Redis(port=own_server.port)
    try:
        first = asyncio.create_task(a.wait(["q"], 5))  # blocks on the blocking connection
        await asyncio.sleep(0.05)
        assert await a.claim(["q"], 1) == []  # parks: the next wait skips its peek
        # the pool's idle connection, closed (as by a server's idle timeout): the next
        # borrow connects it again, handshake and all
        await a._client().connection_pool.disconnect(inuse_connections=False)
        await asyncio.sleep(0.05)
        counts = _connections(raw)
        await _cancelled_while_paused(raw, a, 1, 0.4)  # the handshake's replies did not come
        first.cancel()
        await asyncio.gather(first, return_exceptions=True)
        await asyncio.sleep(0.1)  # the abandoned BLPOP's clean-up ends
        for _ in range(3):  # the pool hands out its newest idle connection first
            await a.stats("q")
        opened, still_open = counts()
        # the borrowed connection was connected, and none opened since has been closed
        # (dropped for unread bytes)
        assert opened >= 1 and opened == still_open, (opened, still_open)
    finally:
        raw.close()
        await a.close()


# -- hand-offs: enqueue leases a task straight to a parked worker ------------------------


async def _parked(b: RedisBroker, queues: list[str], timeout: float = 5.0) -> asyncio.Task:
    """A wait() of ``b``, once it is blocked on the server (parked)."""
    w = asyncio.create_task(b.wait(queues, timeout))
    await asyncio.sleep(0.05)
    assert not w.done()
    return w


async def test_an_enqueue_hands_the_task_to_a_parked_worker(broker, url):
    other, rival = RedisBroker(url), RedisBroker(url)
    await rival.open()
    try:
        w = await _parked(broker, ["q"])
        sent = task()
        other.enqueue_blocking([sent])
        await asyncio.wait_for(w, 1)
        # Leased to the parked worker by the enqueue itself: a rival's claim finds nothing.
        assert (await broker.stats("q")).leased == 1
        assert await rival.claim(["q"], 10) == []
        got = await broker.claim(["q"], 10)
        assert [(c.id, c.attempt, c.payload) for c in got] == [(sent.id, 1, b"p")]
        await broker.ack([got[0].lease])
        assert (await broker.stats("q")).leased == 0
    finally:
        await other.close()
        await rival.close()


async def test_a_paused_or_rate_limited_queue_hands_nothing_off(broker, url):
    other = RedisBroker(url)
    try:
        await broker.set_paused("q", True)
        w = await _parked(broker, ["q"])
        other.enqueue_blocking([task()])
        await asyncio.wait_for(w, 0.5)  # refused hand-off: woken by a token instead
        s = await broker.stats("q")
        assert (s.ready, s.leased) == (1, 0)
        assert await broker.claim(["q"], 10) == []

        await broker.declare([QueuePolicy("r", rate=1.0, bucket_size=1)])
        w = await _parked(broker, ["r"])
        other.enqueue_blocking([task("r"), task("r")])  # one token: one hand-off at most
        await asyncio.wait_for(w, 1)
        s = await broker.stats("r")
        assert (s.ready, s.leased) == (1, 1)
        assert len(await broker.claim(["r"], 10)) == 1
    finally:
        await other.close()


async def test_wake_tokens_only_for_parked_workers_that_got_no_task(broker, url, raw):
    db_raw = raw
    wake = QueueKeys.of(broker.prefix, "q").wake
    # Nobody parked, so nobody is blocked: an enqueue needs to wake no one.
    broker.enqueue_blocking([task()])
    assert db_raw.llen(wake) == 0
    await broker.claim(["q"], 10)
    # A wake-only (cluster) worker parked: it gets a token, not the task.
    db_raw.zadd(QueueKeys.of(broker.prefix, "q").keys[8], {"~w": 9e15})
    sent = task()
    broker.enqueue_blocking([sent])
    assert db_raw.llen(wake) == 1
    assert [c.id for c in await broker.claim(["q"], 10)] == [sent.id]
    # A later eta, with a worker parked: a token, so it can re-time its wait.
    db_raw.delete(wake)
    w = await _parked(broker, ["q"])
    broker.enqueue_blocking([task(delay=30.0)])
    await asyncio.wait_for(w, 0.5)
    assert (await broker.stats("q")).scheduled == 1


async def test_cancelled_waits_lose_no_hand_off(broker, url):
    """Waits cancelled at every point (as a worker does whenever a slot frees) while a
    producer sends: every task is claimed at once, none waits for its lease to run out."""
    n = 600
    producer = RedisBroker(url)

    def produce():
        for i in range(n):
            producer.enqueue_blocking([task(payload=b"%d" % i)])
            if i % 3 == 0:
                time.sleep(0.001)

    th = threading.Thread(target=produce)
    th.start()
    seen: set[bytes] = set()
    delays = [0.0002, 0.0005, 0.001, 0.002, 0.005, 1.0]
    i = 0
    deadline = time.monotonic() + 30
    while len(seen) < n and time.monotonic() < deadline:
        got = await broker.claim(["q"], 1 + i % 7)
        if got:
            seen.update(c.payload for c in got)
            await broker.ack([c.lease for c in got])
            continue
        i += 1
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(broker.wait(["q"], 1.0), delays[i % len(delays)])
    th.join()
    await producer.close()
    assert len(seen) == n, f"{n - len(seen)} tasks stuck (leased, never handed over)"
    s = await broker.stats("q")
    assert (s.ready, s.leased) == (0, 0)


async def test_close_gives_back_what_was_handed_over(url):
    a, other = RedisBroker(url), RedisBroker(url)
    await a.open()
    await other.open()
    try:
        w = await _parked(a, ["q"])
        w.cancel()  # parked, then stopped waiting: a hand-off lands in the inbox unread
        await asyncio.gather(w, return_exceptions=True)
        sent = task()
        await other.enqueue([sent])
        assert (await other.stats("q")).leased == 1
        await a.close()
        got = await other.claim(["q"], 10)  # at once: no lease had to run out
        assert [(c.id, c.attempt) for c in got] == [(sent.id, 1)]
    finally:
        await other.close()


async def test_a_claim_unparks_the_worker_from_every_queue(broker, url):
    other = RedisBroker(url)
    try:
        w = await _parked(broker, ["q", "q2"])
        other.enqueue_blocking([task("q2")])
        await asyncio.wait_for(w, 1)
        assert [c.queue for c in await broker.claim(["q", "q2"], 10)] == ["q2"]
        # no longer parked on q either: the next task there waits for a claim, unleased
        other.enqueue_blocking([task("q")])
        s = await broker.stats("q")
        assert (s.ready, s.leased) == (1, 0)
    finally:
        await other.close()


async def test_a_worker_that_died_parked_gets_no_hand_off(url):
    a, other = RedisBroker(url), RedisBroker(url)
    await a.open()
    await other.open()
    try:
        await a.wait(["q"], 0.05)  # parked for the wait plus 1 s
        assert a._park.queues == {"q"}
        await a._client().aclose()  # dies: no claim, no close
        await asyncio.sleep(1.2)
        other.enqueue_blocking([task()])
        s = await other.stats("q")
        assert (s.ready, s.leased) == (1, 0)
    finally:
        a._r = None
        await other.close()


# -- rediss:// --------------------------------------------------------------------------


@pytest.fixture
def tls_server(tmp_path):
    """A TLS-only redis-server of this test's own, with a self-signed certificate."""
    import shutil
    import socket
    import ssl
    import subprocess

    exe, openssl = shutil.which("redis-server"), shutil.which("openssl")
    if not exe or not openssl:
        pytest.skip("needs redis-server and openssl to start a TLS server")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True,
    )  # fmt: skip
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [exe, "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
         "--tls-cert-file", str(cert), "--tls-key-file", str(key),
         "--tls-ca-cert-file", str(cert), "--tls-auth-clients", "no",
         "--save", "", "--appendonly", "no", "--dir", str(tmp_path)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 10
        while True:
            if proc.poll() is not None:
                out = proc.stdout.read().decode(errors="replace")[-300:]
                pytest.skip(f"this redis-server cannot serve TLS: {out}")
            try:
                client = redis.Redis(host="127.0.0.1", port=port, ssl=True, ssl_ca_certs=str(cert))
                if client.ping():
                    client.close()
                    break
            except (redis.ConnectionError, ssl.SSLError, OSError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        yield port, cert
    finally:
        proc.terminate()
        proc.wait(10)


async def test_rediss_passes_the_conformance_suite(tls_server):
    from offload.testing import check_broker

    port, cert = tls_server
    url = f"rediss://127.0.0.1:{port}/0?prefix=tls&ssl_ca_certs={cert}"
    assert len(await check_broker(lambda: broker_from_url(url))) >= 40

    # the synchronous producer path and a hand-off, over TLS too
    a, b = RedisBroker(url), RedisBroker(url)
    await a.open()
    try:
        w = await _parked(a, ["tq"])
        b.enqueue_blocking([task("tq", b"over tls")])
        await asyncio.wait_for(w, 2)
        assert [c.payload for c in await a.claim(["tq"], 5)] == [b"over tls"]
    finally:
        await a.close()
        await b.close()


async def test_plain_redis_url_to_a_tls_port_is_a_clear_error(tls_server):
    port, _ = tls_server
    b = broker_from_url(f"redis://127.0.0.1:{port}/0?prefix=tls&socket_connect_timeout=2")
    with pytest.raises(BrokerUnavailable, match=f"127.0.0.1:{port}"):
        await asyncio.wait_for(b.open(), 20)
    await b.close()


async def test_a_workers_empty_claim_parks_it_and_a_plain_claim_does_not(broker, url, raw):
    other = RedisBroker(url)
    parked_key = QueueKeys.of(broker.prefix, "q").keys[8]
    db_raw = raw
    try:
        # A plain consumer (no on_handoff: it may never wait) is not parked by a claim, so
        # an enqueue leaves the task for anyone.
        assert await broker.claim(["q"], 10) == []
        assert db_raw.zcard(parked_key) == 0
        # A worker's empty claim parks it at once: an enqueue right after is handed to it,
        # and its wait starts it without a round trip of its own before blocking.
        started: list = []
        broker.on_handoff = lambda got: started.extend(got) or True
        assert await broker.claim(["q"], 10) == []
        assert db_raw.zcard(parked_key) == 1
        sent = task()
        other.enqueue_blocking([sent])
        assert (await broker.stats("q")).leased == 1
        await asyncio.wait_for(broker.wait(["q"], 5), 1)
        assert [c.id for c in started] == [sent.id]
        # Each claim unparks it first; a worker's empty claim parks it again at once, a
        # plain one does not.
        assert await broker.claim(["q"], 10) == [] and db_raw.zcard(parked_key) == 1
        broker.on_handoff = None
        assert await broker.claim(["q"], 10) == [] and db_raw.zcard(parked_key) == 0
    finally:
        await other.close()


async def test_connections_outside_the_pool_reconnect_after_a_restart(own_server):
    """The one-by-one script connection, the blocking one and a sender thread's are kept
    outside redis-py's pool: after a restart each must reconnect on its next use, not
    report an outage for ever (the server closed them while they were idle)."""
    url = f"redis://127.0.0.1:{own_server.port}/0?prefix=reconnect"
    b = RedisBroker(url)
    await b.open()
    try:
        assert await b.enqueue([task()]) == [True]
        assert b.enqueue_blocking([task()]) == [True]
        await b.wait(["other"], 0.01)
        own_server.stop()
        own_server.start()
        await asyncio.sleep(0.7)  # idle: the loop sees the old sockets closed
        assert await b.enqueue([task()]) == [True]
        assert b.enqueue_blocking([task()]) == [True]
        t = time.monotonic()
        await b.wait(["other"], 0.05)
        assert time.monotonic() - t < 1.0
        assert (await b.stats("q")).ready == 4
    finally:
        await b.close()


# -- the protocol changes: expired claims, applied leases, late acks, delayed releases -----


async def test_a_claim_says_when_it_takes_over_an_expired_lease(broker):
    await broker.declare([QueuePolicy("q", lease=0.2)])
    await broker.enqueue([task()])
    (first,) = await broker.claim(["q"], 1)
    assert (first.expired, first.attempt) == (False, 1)
    await asyncio.sleep(0.25)
    (again,) = await broker.claim(["q"], 1)  # its worker died: no verdict
    assert (again.expired, again.attempt) == (True, 2)
    # a retry, a release and a requeue all end in a plain (not expired) claim
    assert await broker.retry(again.lease, 0, "boom")
    (c,) = await broker.claim(["q"], 1)
    assert (c.expired, c.attempt) == (False, 3)
    await broker.release([c.lease])
    (c,) = await broker.claim(["q"], 1)
    assert (c.expired, c.attempt) == (False, 3)
    assert await broker.dead_letter(c.lease, "x", "")
    assert await broker.requeue_dead("q") == 1
    (c,) = await broker.claim(["q"], 1)
    assert (c.expired, c.attempt) == (False, 1)


async def test_extend_returns_the_lease_the_broker_applies(broker):
    await broker.enqueue([task(), task()])
    a, b = await broker.claim(["q"], 2)
    assert a.lease_until - a.now == pytest.approx(5.0)
    assert await broker.extend([a.lease, b.lease]) == [5.0, 5.0]
    await broker.declare([QueuePolicy("q", lease=0.3)])  # a later deploy shortened it
    stale = Lease("q", b.id, "not-the-token")
    assert await broker.extend([a.lease, stale]) == [0.3, None]
    await broker.ack([a.lease])
    assert await broker.extend([a.lease]) == [None]
    await broker.enqueue([task()])
    (c,) = await broker.claim(["q"], 1)
    assert c.lease_until - c.now == pytest.approx(0.3)


async def test_a_late_ack_wins_whatever_happened_to_the_task(broker, raw):
    await broker.declare([QueuePolicy("q", lease=0.2, dedup_window=60)])
    other = task(name="kept")
    await broker.enqueue([task(name="n1"), task(), task(), other])
    got = {c.id: c for c in await broker.claim(["q"], 4)}
    first = next(c for c in got.values() if c.name == "n1")
    rest = [c for c in got.values() if c.id not in (first.id, other.id)]
    await asyncio.sleep(0.25)
    # after the expiry: `first` re-leased to another worker (and kept), rest[0] and
    # `other` left ready, rest[1] dead-lettered. All four come back in one claim, so
    # which one a single-task claim would take (`other` too, by id order) cannot matter.
    again = {c.id: c for c in await broker.claim(["q"], 10)}
    assert set(again) == set(got)
    await broker.release([again[rest[0].id].lease, again[other.id].lease])
    assert await broker.dead_letter(again[rest[1].id].lease, "worker died", "")
    leases = [c.lease for c in got.values() if c.id != other.id]
    await broker.ack([*leases, Lease("q", "no-such-id", "t")])
    s = await broker.stats("q")
    assert (s.ready, s.leased, s.dead) == (1, 0, 0)  # only `other`, released, is left
    # the acked name stays reserved for the dedup window
    assert await broker.enqueue([task(name="n1")]) == [False]
    k_tasks = QueueKeys.of(broker.prefix, "q").keys[3]
    assert raw.hlen(k_tasks) == 1
    # max_concurrent counts what is really leased: nothing now
    await broker.declare([QueuePolicy("q", lease=5, max_concurrent=1)])
    assert [c.id for c in await broker.claim(["q"], 5)] == [other.id]


async def test_release_with_a_delay(broker):
    await broker.enqueue([task()])
    (c,) = await broker.claim(["q"], 1)
    for bad in (-1, float("nan"), float("inf"), "1", True, None):
        with pytest.raises(ConfigError, match="delay"):
            await broker.release([c.lease], bad)
    await broker.release([Lease("q", c.id, "stale")], 0)  # ignored
    assert (await broker.stats("q")).leased == 1
    await broker.release([c.lease], 0.3)
    s = await broker.stats("q")
    assert (s.scheduled, s.leased) == (1, 0)
    assert await broker.claim(["q"], 1) == []
    await asyncio.sleep(0.32)
    (again,) = await broker.claim(["q"], 1)
    assert again.attempt == 1  # not counted


async def test_enqueue_is_idempotent_by_id_in_every_state(broker):
    ready, later, leased, dead = task(), task(delay=60), task(name="a"), task()
    assert await broker.enqueue([leased, dead]) == [True, True]
    got = {c.id: c for c in await broker.claim(["q"], 2)}
    assert await broker.dead_letter(got[dead.id].lease, "x", "")
    assert await broker.enqueue([ready, later]) == [True, True]
    before = await broker.stats("q")
    again = [ready, later, leased, dead, ready]
    assert await broker.enqueue(again) == [True] * 5
    assert [broker.enqueue_blocking([t]) for t in again] == [[True]] * 5
    assert await broker.enqueue([leased]) == [True]
    after = await broker.stats("q")
    assert (after.ready, after.scheduled, after.leased, after.dead) == (
        before.ready,
        before.scheduled,
        before.leased,
        before.dead,
    )


async def test_stats_carry_the_enforced_policy(url):
    b = RedisBroker(url)
    await b.open()
    try:
        assert (await b.stats("fresh")).policy is None
        await b.declare([QueuePolicy("fresh", rate=2.0, max_concurrent=3, lease=7.5)])
        p = (await b.stats("fresh")).policy
        assert (p.rate, p.bucket, p.max_concurrent, p.lease, p.dedup_window) == (
            2.0,
            2.0,
            3,
            7.5,
            3600.0,
        )
        await b.declare([QueuePolicy("fresh", dedup_window=10)])
        p = (await b.stats("fresh")).policy
        assert (p.rate, p.bucket, p.max_concurrent, p.lease, p.dedup_window) == (
            None,
            None,
            None,
            60.0,
            10.0,
        )
    finally:
        await b.close()


async def test_dead_letters_limit_is_checked_before_any_io():
    b = RedisBroker("redis://127.0.0.1:1/0?prefix=nowhere")  # never opened
    for bad in (-1, 10_001, 1.5, "10", True, None):
        with pytest.raises(ConfigError, match="limit"):
            await b.dead_letters("q", bad)
    assert await b.dead_letters("q", 0) == []


# -- errors by who is at fault --------------------------------------------------------------


async def test_a_request_redis_rejects_is_broker_refused(broker, raw):
    await broker.enqueue([task()])
    (c,) = await broker.claim(["q"], 1)
    with pytest.raises(BrokerRefused, match="position 3"):
        await broker.retry(c.lease, 0, "bad\ud800text")
    with pytest.raises(BrokerRefused, match="position"):
        await broker.dead_letter(c.lease, "ok", "tb \udfff")
    with pytest.raises(BrokerRefused):
        await broker.enqueue([task(name="\ud800")])
    with pytest.raises(BrokerRefused):
        broker.enqueue_blocking([task(name="\ud800")])
    s = await broker.stats("q")
    assert (s.ready, s.leased, s.dead) == (0, 1, 0)  # nothing happened
    assert await broker.extend([c.lease]) == [5.0]
    # an error reply that is no outage: a key of the wrong type under the queue's prefix
    raw.set(QueueKeys.of(broker.prefix, "bad").keys[0], "not a hash")
    with pytest.raises(BrokerRefused, match=r"claim.*WRONGTYPE"):
        await broker.claim(["bad"], 1)


@pytest.fixture
def small_server(tmp_path):
    """A redis-server of this test's own with 2 MB of memory and no eviction."""
    import shutil
    import socket
    import subprocess

    exe = shutil.which("redis-server")
    if not exe:
        pytest.skip("redis-server not installed")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--maxmemory", "2mb", "--maxmemory-policy", "noeviction", "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 10
    while True:
        try:
            if redis.Redis(port=port).ping():
                break
        except redis.ConnectionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)
    yield port
    proc.terminate()
    proc.wait(10)


async def test_a_full_server_is_broker_full_and_nothing_is_half_done(small_server):
    b = RedisBroker(f"redis://127.0.0.1:{small_server}/0?prefix=full")
    await b.open()
    try:
        await b.declare([QueuePolicy("q", lease=30)])
        sent = 0
        with pytest.raises(BrokerFull, match=r"out of memory.*maxmemory"):
            for _ in range(200):
                await b.enqueue([task(payload=b"x" * 50_000)])
                sent += 1
        before = await b.stats("q")
        assert before.ready == sent > 0
        with pytest.raises(BrokerFull):
            await b.enqueue([task(payload=b"x" * 50_000, name=f"n{i}") for i in range(5)])
        with pytest.raises(BrokerFull):
            b.enqueue_blocking([task(payload=b"x" * 50_000)])
        assert (await b.stats("q")).ready == sent
        # workers keep going (claim, extend, ack all free memory or need none): the queue
        # drains, and sends succeed again
        got = await b.claim(["q"], 100)
        assert len(got) == sent
        assert await b.extend([got[0].lease]) == [30.0]
        await b.ack([c.lease for c in got])
        assert await b.enqueue([task()]) == [True]
    finally:
        await b.close()


# -- URLs: faults found when the broker is built, or at open() ----------------------------


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("redis://", "no host"),
        ("redis://:6379/0", "no host"),
        ("redis://127.0.0.1:6379/abc", "database 'abc'"),
        ("redis://127.0.0.1:6379/-1", "database '-1'"),
        ("redis://127.0.0.1:6379/0?db=x", "db='x'"),
        ("redis://127.0.0.1:6379/0?prefx=a", "did you mean 'prefix'"),
        ("redis://127.0.0.1:6379/0?socket_timeuot=1", "did you mean 'socket_timeout'"),
        ("redis://127.0.0.1:6379/0?socket_timeout=soon", "socket_timeout='soon'"),
        ("redis://127.0.0.1:99999/0", "port"),
        ("redis://127.0.0.1:port/0", "port"),
        ("redis+cluster://127.0.0.1:7000/2", "database 0 only"),
        ("redis://127.0.0.1/0?prefix={x}", "braces"),
    ],
)
def test_url_faults_fail_at_construction(url, says):
    with pytest.raises(BrokerURLError, match=says) as err:
        broker_from_url(url)
    assert "\n" not in str(err.value)


async def test_a_database_the_server_lacks_fails_at_open_with_the_count():
    url = REDIS_URL.rsplit("/", 1)[0] + "/99?prefix=nodb"
    b = broker_from_url(url)
    t = time.monotonic()
    with pytest.raises(BrokerURLError, match=r"database 99 does not exist.* 16 databases"):
        await b.open()
    assert time.monotonic() - t < 2
    await b.close()


async def test_a_wrong_password_fails_at_open(tmp_path):
    import shutil
    import socket
    import subprocess

    exe = shutil.which("redis-server")
    if not exe:
        pytest.skip("redis-server not installed")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--requirepass", "sesame", "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                redis.Redis(port=port, password="sesame").ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)
        for creds in (":wrong@", ""):
            b = broker_from_url(f"redis://{creds}127.0.0.1:{port}/0?prefix=pw")
            with pytest.raises(BrokerURLError, match="password"):
                await b.open()
            await b.close()
        good = broker_from_url(f"redis://:sesame@127.0.0.1:{port}/0?prefix=pw")
        await good.open()
        await good.close()
    finally:
        proc.terminate()
        proc.wait(10)


# -- hand-offs a worker cannot start, and workers killed while parked --------------------


async def test_a_refused_hand_off_is_released_at_once_uncounted(broker, url):
    other = RedisBroker(url)
    await other.open()
    try:
        broker.on_handoff = lambda got: False  # no free slot (or stopping)
        assert await broker.claim(["q"], 10) == []  # a worker's empty claim parks it
        w = asyncio.create_task(broker.wait(["q"], 2))
        await asyncio.sleep(0.05)
        sent = task()
        await other.enqueue([sent])
        await asyncio.wait_for(w, 1)
        s = await other.stats("q")
        assert (s.ready, s.leased) == (1, 0)  # given back, not left leased un-heartbeated
        (c,) = await other.claim(["q"], 10)
        assert (c.id, c.attempt, c.expired) == (sent.id, 1, False)
    finally:
        await other.close()


async def _killed_while_parked(url: str) -> RedisBroker:
    """A worker's broker that parked (its empty claim) and then died: its connections are
    gone, nothing unparked it or gave anything back."""
    dead = RedisBroker(url)
    await dead.open()
    dead.on_handoff = lambda got: True
    assert await dead.claim(["q"], 10) == []
    dead._park.queues.clear()  # so close() neither unparks nor gives back: a kill -9
    await dead.close()
    return dead


async def test_a_hand_off_to_a_killed_worker_costs_no_attempt(broker, url):
    await broker.declare([QueuePolicy("q", lease=0.3)])
    await _killed_while_parked(url)
    sent = task()
    await broker.enqueue([sent])
    s = await broker.stats("q")
    assert s.leased == 1  # handed to the dead worker: its inbox holds it, unread
    await asyncio.sleep(0.35)
    (c,) = await broker.claim(["q"], 10)
    # that lease was no attempt: the task never ran (with limit=0 it must not be buried)
    assert (c.id, c.attempt, c.expired) == (sent.id, 1, False)
    await broker.ack([c.lease])


async def test_a_hand_off_to_a_killed_worker_is_claimable_within_seconds(broker, url):
    # The queue's lease is 5 s here (60 s by default): a hand-off's first lease is capped
    # at 3 s, so another worker takes a task handed to a dead one without a whole lease.
    await _killed_while_parked(url)
    sent = task()
    await broker.enqueue([sent])
    (c0,) = [c for c in [await broker.get_task("q", sent.id)] if c is not None]
    assert c0.state == "leased"
    assert await broker.claim(["q"], 10) == []
    await asyncio.sleep(3.1)
    (c,) = await broker.claim(["q"], 10)
    assert (c.id, c.attempt, c.expired) == (sent.id, 1, False)
    assert abs((c.lease_until - c.now) - 5.0) < 0.1  # a normal claim: the full lease


async def test_a_hand_off_read_by_a_worker_that_then_died_counts(broker, url):
    await broker.declare([QueuePolicy("q", lease=0.3)])
    reader = RedisBroker(url)
    await reader.open()
    w = await _parked(reader, ["q"])
    sent = task()
    await broker.enqueue([sent])
    await asyncio.wait_for(w, 1)  # read: it may have started, and crashed the worker
    reader._park.queues.clear()
    reader._park.handed.clear()
    await reader.close()
    await asyncio.sleep(0.35)
    (c,) = await broker.claim(["q"], 10)
    assert (c.id, c.attempt, c.expired) == (sent.id, 2, True)


async def test_a_killed_parked_worker_stops_receiving_hand_offs_soon(broker, url):
    from offload.brokers.redis.park import CLAIM_PARK_TTL

    await _killed_while_parked(url)
    await asyncio.sleep(CLAIM_PARK_TTL + 0.05)
    broker.enqueue_blocking([task()])
    s = await broker.stats("q")
    assert (s.ready, s.leased) == (1, 0)
    assert CLAIM_PARK_TTL <= 1.5
