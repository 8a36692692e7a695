"""Push delivery against its floor, side by side in one run.

The receiver is one uvicorn process on loopback answering 204 to everything. The floor is
a plain httpx loop in this process posting the same body to it with the same concurrency
as the worker (``--concurrency``, keep-alive connections). Then, per broker, ``--n`` push
tasks are enqueued (not timed) and one worker in this process delivers them (timed from
its start until the queue is empty): signed, SSRF-checked, with the Cloud Tasks headers,
acked one by one (the receiver and the namespaces are bench/_receiver.py's). Prints
deliveries/s and the ratio to the floor; the goal is 0.7x.

    .venv/bin/python bench/bench_push.py                        # Redis, 3,000 tasks
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

from _receiver import broker_url, cleanup, free_port, start_receiver

from offload import App
from offload.testing import run_until_idle

BODY = b'{"order": 12345, "items": ["a", "b", "c"]}'
SECRET = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


async def floor(url: str, n: int, concurrency: int) -> float:
    """A plain httpx loop: ``n`` POSTs from ``concurrency`` coroutines; requests/s."""
    import httpx

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits) as client:
        for _ in range(50):  # warm up the connections
            await client.post(url, content=BODY)
        left = n

        async def one() -> None:
            nonlocal left
            while left > 0:
                left -= 1
                r = await client.post(url, content=BODY, headers={"Content-Type": "x/y"})
                assert r.status_code == 204

        t0 = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(concurrency)))
        return n / (time.perf_counter() - t0)


def push(kind: str, target: str, n: int, concurrency: int, tmp: str) -> float:
    """``n`` push tasks delivered by one worker: deliveries/s (enqueue not timed)."""
    url = broker_url(kind, tmp, "bp")
    app = App("benchpush", broker=url)
    app.queue("hooks", lease=60.0)
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
    ap.add_argument("--n", type=int, default=3000)
    ap.add_argument("--concurrency", type=int, default=32)
    args = ap.parse_args()
    os.environ["OFFLOAD_PUSH_SECRET"] = SECRET
    os.environ["OFFLOAD_PUSH_ALLOW"] = "127.0.0.0/8"
    port = free_port()
    proc = start_receiver(port)
    target = f"http://127.0.0.1:{port}/hook/{uuid.uuid4().hex[:6]}"
    try:
        base = asyncio.run(floor(target, args.n, args.concurrency))
        print(
            f"floor   httpx loop        {base:9,.0f} requests/s  (concurrency {args.concurrency})"
        )
        with tempfile.TemporaryDirectory() as tmp:
            for kind in args.brokers.split(","):
                rate = push(kind, target, args.n, args.concurrency, tmp)
                print(
                    f"{kind:9s}push deliveries  {rate:9,.0f} /s          "
                    f"ratio {rate / base:.2f}x of the floor (goal 0.7x)"
                )
    finally:
        proc.terminate()
        proc.wait(10)


if __name__ == "__main__":
    main()
