"""Push delivery against its floor, side by side in one run.

The receiver is one uvicorn process on loopback answering 204 to everything. The floor is
a plain httpx loop in this process posting the same body to it with the same concurrency
as the worker (``--concurrency``, keep-alive connections). Then, per broker, ``--n`` push
tasks are enqueued (not timed) and one worker in this process delivers them (timed from
its start until the queue is empty): signed, SSRF-checked, with the Cloud Tasks headers,
acked one by one. Prints deliveries/s and the ratio to the floor; the goal is 0.7x.

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
import pathlib
import subprocess
import sys
import tempfile
import time
import uuid

from bench_http import free_port

from offload import App
from offload.testing import run_until_idle

HERE = pathlib.Path(__file__).resolve().parent
BODY = b'{"order": 12345, "items": ["a", "b", "c"]}'
SECRET = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


REDIS_DB = 14  # not 15, which the peers' benchmarks flush


def broker_url(kind: str, tmp: str) -> str:
    ns = "bp" + uuid.uuid4().hex[:10]
    if kind == "sqlite":
        return f"sqlite:///{tmp}/{ns}.db"
    if kind == "redis":
        return f"redis://127.0.0.1:6379/{REDIS_DB}?prefix={ns}"
    if kind == "postgres":
        return f"postgresql://postgres@127.0.0.1:5432/test?schema={ns}"
    raise SystemExit(f"--brokers: {kind!r} is not sqlite, redis or postgres")


def cleanup(kind: str, url: str) -> None:
    """Drop the step's namespace so the benchmark leaves nothing behind."""
    if kind == "redis":
        import redis

        prefix = url.rsplit("prefix=", 1)[1]
        r = redis.Redis(host="127.0.0.1", port=6379, db=REDIS_DB)
        keys = list(r.scan_iter(match=f"*{prefix}*", count=1000))
        for i in range(0, len(keys), 500):
            r.delete(*keys[i : i + 500])
        r.close()
    elif kind == "postgres":
        import psycopg

        schema = url.rsplit("schema=", 1)[1]
        with psycopg.connect("postgresql://postgres@127.0.0.1:5432/test", autocommit=True) as c:
            c.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


async def receiver(scope, receive, send):
    """The receiver: reads the body, answers 204 (``uvicorn bench_push:receiver``)."""
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body"):
        pass
    await send({"type": "http.response.start", "status": 204, "headers": []})
    await send({"type": "http.response.body", "body": b""})


def start_receiver(port: int) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(HERE) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = [sys.executable, "-m", "uvicorn", "bench_push:receiver", "--port", str(port)]
    proc = subprocess.Popen(
        [*cmd, "--log-level", "error", "--no-access-log"],
        env=env,
        stdout=subprocess.DEVNULL,
    )
    import httpx

    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            httpx.post(f"http://127.0.0.1:{port}/", content=b"x", timeout=1)
            return proc
        except httpx.TransportError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("the receiver did not start")


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
    url = broker_url(kind, tmp)
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
