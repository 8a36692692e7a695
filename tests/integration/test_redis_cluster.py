"""The Redis broker, unchanged, on a three-master Redis Cluster started by this module.

Three ``redis-server`` processes with ``cluster-enabled yes`` on loopback ports 7101-7103,
in a temporary directory, joined with ``redis-cli --cluster create``; torn down at the end.
Then the whole conformance suite runs on ``redis+cluster://``.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import time
import uuid

import pytest

from offload.brokers import NewTask, broker_from_url
from offload.core.envelope import new_id
from offload.testing.conformance import CHECKS
from tests.conftest import IN_CI

redis = pytest.importorskip("redis")

PORTS = (7101, 7102, 7103)


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def _unavailable(reason: str) -> None:
    if IN_CI:
        pytest.fail(f"{reason} (CI=true: the cluster test must not skip)")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    server, cli = shutil.which("redis-server"), shutil.which("redis-cli")
    if not server or not cli:
        _unavailable("redis-server/redis-cli not installed")
    busy = [p for p in PORTS if not _port_free(p)]
    if busy:
        _unavailable(f"ports {busy} are in use")
    root = tmp_path_factory.mktemp("redis-cluster")
    procs = []
    try:
        for port in PORTS:
            d = root / str(port)
            d.mkdir()
            procs.append(
                subprocess.Popen(
                    [server, "--port", str(port), "--bind", "127.0.0.1",
                     "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                     "--cluster-node-timeout", "2000", "--dir", str(d), "--save", "",
                     "--appendonly", "no", "--protected-mode", "no"],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )  # fmt: skip
        for port in PORTS:
            _wait_for(lambda p=port: not _port_free(p), f"redis-server on port {port}")
        subprocess.run(
            [cli, "--cluster", "create", *(f"127.0.0.1:{p}" for p in PORTS),
             "--cluster-replicas", "0", "--cluster-yes"],
            check=True, capture_output=True, timeout=30,
        )  # fmt: skip
        clients = [redis.Redis(port=p) for p in PORTS]
        _wait_for(
            lambda: all(c.cluster("info")["cluster_state"] == "ok" for c in clients),
            "cluster_state:ok on every node",
        )
        for c in clients:
            c.close()
        yield f"redis+cluster://127.0.0.1:{PORTS[0]}"
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()


def _wait_for(cond, what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if cond():
                return
        except Exception:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"timed out waiting for {what}")


def _url(cluster: str) -> str:
    return f"{cluster}?prefix=t{uuid.uuid4().hex[:12]}"


@pytest.mark.parametrize("check", CHECKS, ids=[c.__name__ for c in CHECKS])
async def test_conformance_on_cluster(check, cluster):
    url = _url(cluster)
    await check(lambda: broker_from_url(url))


async def test_queues_spread_over_the_masters(cluster):
    url = _url(cluster)
    b = broker_from_url(url)
    assert b.capabilities.cluster
    await b.open()
    try:
        queues = [f"q{i}" for i in range(12)]
        await b.enqueue([NewTask(new_id(), q, q.encode()) for q in queues])
        assert b.enqueue_blocking([NewTask(new_id(), q, b"sync") for q in queues]) == [True] * 12
        owners = set()
        for port in PORTS:
            r = redis.Redis(port=port)
            if any(r.scan_iter(match=f"*{b.prefix}*", count=1000)):
                owners.add(port)
            r.close()
        assert len(owners) >= 2, "12 queues should land on more than one master"
        got = await b.claim(queues, 100)
        assert sorted(c.queue for c in got) == sorted(queues * 2)
        await b.ack([c.lease for c in got])
        # waiting on queues in different slots still wakes on an enqueue to any of them
        waiter = asyncio.create_task(b.wait(queues, 5))
        await asyncio.sleep(0.1)
        t = time.monotonic()
        await b.enqueue([NewTask(new_id(), queues[7], b"x")])
        await asyncio.wait_for(waiter, 2)
        assert time.monotonic() - t < 0.5
    finally:
        await b.close()
        if not os.environ.get("OFFLOAD_KEEP_CLUSTER_KEYS"):
            for port in PORTS:
                r = redis.Redis(port=port)
                keys = list(r.scan_iter(match=f"*{b.prefix}*", count=1000))
                for k in keys:
                    r.delete(k)
                r.close()


def test_events_and_calls_on_cluster(cluster, tmp_path):
    """On a cluster a publish reaches subscribers whose queues live on different masters
    (each subscriber's task stored atomically by itself, no transaction across slots),
    a keyed repeat is still a no-op, and a call gets its result back through the reply
    list (stored and delivered by two commands there)."""
    from offload import App, Worker

    url = _url(cluster)
    app = App("clusterev", broker=url)
    queues = [f"ev{i}" for i in range(6)]
    for q in queues:
        app.queue(q)
    got: list[str] = []
    for q in queues:
        app.on("signup", queue=q, name=f"sub-{q}")(lambda user, q=q: got.append(q))

    @app.task(queue="ev0", name="double")
    def double(x: int) -> int:
        return 2 * x

    try:
        assert len(app.publish("signup", {"id": 1}, key="k1")) == 6
        assert app.publish("signup", {"id": 1}, key="k1") == []
        assert len(asyncio.run(app.publish_async("signup", {"id": 2}))) == 6
        from redis.cluster import key_slot

        prefix = url.split("prefix=", 1)[1]
        slots = {key_slot(f"{{{prefix}:{q}}}".encode()) for q in queues}
        assert len(slots) > 1, "the queues should be in different slots"
        worker = Worker(app, queues=queues, install_signal_handlers=False)
        loop = asyncio.new_event_loop()
        import threading

        t = threading.Thread(target=lambda: loop.run_until_complete(worker.run()), daemon=True)
        t.start()
        try:
            assert double.call_with(args=(21,), timeout=10) == 42
            _wait_for(lambda: len(got) == 12, "every subscriber twice")
        finally:
            loop.call_soon_threadsafe(worker.stop)
            t.join(20)
        assert sorted(got) == sorted(queues * 2)
    finally:
        app.close()
