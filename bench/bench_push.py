"""Push delivery against its floor, side by side in one run.

The receiver is one uvicorn process on loopback answering 204 to everything. Two floors
post the same body to it from this process, each with the concurrency a worker runs at by
default (``DEFAULT_CONCURRENCY``, 32; ``--concurrency`` changes both sides) over keep-alive
connections: the issue's floor, a plain ``httpx.AsyncClient`` loop (connection limits set
to that concurrency, so it never waits for or churns connections), and a stricter one, the
same loop through offload's own push connections (``offload.push_pool``) with no worker,
broker or signing: what the delivery transport alone can do. Then, per broker, ``--n`` push
tasks on a queue with default settings are enqueued (not timed) and one worker in this
process delivers them with its default concurrency (timed from its start until the queue is
empty): signed, SSRF-checked (``OFFLOAD_PUSH_ALLOW=127.0.0.0/8`` lets the loopback
receiver through), with the Cloud Tasks headers, acked one by one (the receiver and the
namespaces are bench/_receiver.py's). Prints deliveries/s and the ratios to both
floors; the goal is 0.7x of the httpx floor.

    .venv/bin/python bench/bench_push.py                        # Redis, 5,000 tasks
    .venv/bin/python bench/bench_push.py --brokers sqlite,redis,postgres --n 5000

Needs Redis on 127.0.0.1:6379 (database 14, keys under a fresh prefix, deleted after) and,
for postgres, PostgreSQL on 127.0.0.1:5432 (database ``test``, a fresh schema, dropped
after). Loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable

from _receiver import broker_url, cleanup, free_port, start_receiver

from offload import App
from offload.autoscale import DEFAULT_CONCURRENCY
from offload.testing import run_until_idle

BODY = b'{"order": 12345, "items": ["a", "b", "c"]}'
SECRET = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


async def _loop(posts: list[Callable[[], Awaitable[int]]], n: int) -> float:
    """``n`` calls from one coroutine per ``posts`` entry after a warm-up; calls/s."""
    for post in posts:  # warm up: open the connections
        assert await post() == 204
    left = n

    async def one(post: Callable[[], Awaitable[int]]) -> None:
        nonlocal left
        while left > 0:
            left -= 1
            assert await post() == 204

    t0 = time.perf_counter()
    await asyncio.gather(*(one(post) for post in posts))
    return n / (time.perf_counter() - t0)


async def floor(url: str, n: int, concurrency: int, shared: bool) -> float:
    """A plain httpx loop with keep-alive connections: requests/s. ``shared``: one
    ``AsyncClient`` for every coroutine (its pool limits set to the concurrency), else one
    client per coroutine, which spares httpx's pool a scan of every connection per request
    start and end (the faster httpx loop on this receiver, and so the stricter floor)."""
    import httpx

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    clients = [httpx.AsyncClient(limits=limits) for _ in range(1 if shared else concurrency)]

    def poster(client: httpx.AsyncClient) -> Callable[[], Awaitable[int]]:
        async def post() -> int:
            r = await client.post(url, content=BODY, headers={"Content-Type": "x/y"})
            return r.status_code

        return post

    try:
        return await _loop([poster(clients[i % len(clients)]) for i in range(concurrency)], n)
    finally:
        for client in clients:
            await client.aclose()


async def transport(port: int, path: str, n: int, concurrency: int) -> float:
    """The same loop through offload's push connections alone: requests/s."""
    from offload.push_pool import Pool

    pool = Pool()
    to = ("http", "127.0.0.1", port, "", None)
    headers = [
        (b"Host", f"127.0.0.1:{port}".encode()),
        (b"Content-Length", str(len(BODY)).encode()),
        (b"Content-Type", b"x/y"),
    ]

    async def post() -> int:
        status, _ = await pool.request(to, "POST", path.encode(), headers, BODY, None, 65536)
        return status

    try:
        return await _loop([post] * concurrency, n)
    finally:
        await pool.aclose()


def push(kind: str, target: str, n: int, concurrency: int, tmp: str) -> float:
    """``n`` push tasks delivered by one worker: deliveries/s (enqueue not timed)."""
    url = broker_url(kind, tmp, "bp")
    app = App("benchpush", broker=url)
    app.queue("hooks")  # default policy
    try:
        tf = app.get_task("offload.push")
        from offload.push import make_request

        req = make_request(target, BODY, {"Content-Type": "x/y"})
        for i in range(0, n, 1000):
            tf.send_many([((req,), {}, {"queue": "hooks"}) for _ in range(min(1000, n - i))])
        t0 = time.perf_counter()
        stats = run_until_idle(app, ["hooks"], concurrency=concurrency, timeout=600)
        took = time.perf_counter() - t0
        left = app.stats("hooks")
        assert stats.succeeded == n, f"{stats.succeeded} of {n} delivered ({stats}, {left})"
        return n / took
    finally:
        app.close()
        cleanup(kind, url)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--brokers", default="redis")
    ap.add_argument("--n", type=int, default=5000)
    ap.add_argument("--concurrency", type=int, default=DEFAULT_CONCURRENCY)
    args = ap.parse_args()
    os.environ["OFFLOAD_PUSH_SECRET"] = SECRET
    os.environ["OFFLOAD_PUSH_ALLOW"] = "127.0.0.0/8"
    port = free_port()
    proc = start_receiver(port)
    path = f"/hook/{uuid.uuid4().hex[:6]}"
    target = f"http://127.0.0.1:{port}{path}"
    c = args.concurrency
    try:
        shared = asyncio.run(floor(target, args.n, c, shared=True))
        print(f"floor    httpx, one AsyncClient       {shared:9,.0f} requests/s  (concurrency {c})")
        base = asyncio.run(floor(target, args.n, c, shared=False))
        print(f"floor    httpx, a client per task     {base:9,.0f} requests/s")
        bare = asyncio.run(transport(port, path, args.n, c))
        print(
            f"floor    offload's connections alone  {bare:9,.0f} requests/s  (no worker or broker)"
        )
        with tempfile.TemporaryDirectory() as tmp:
            for kind in args.brokers.split(","):
                rate = push(kind, target, args.n, c, tmp)
                best = max(base, shared)
                print(
                    f"{kind:9s}push deliveries              {rate:9,.0f} /s          "
                    f"{rate / best:.2f}x the faster httpx floor (goal 0.7x)\n{'':58s}"
                    f"{rate / shared:.2f}x one AsyncClient, {rate / bare:.2f}x offload's alone"
                )
    finally:
        proc.terminate()
        proc.wait(10)


if __name__ == "__main__":
    main()
