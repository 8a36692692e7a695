"""The floor under any Redis task queue's enqueue-to-start latency on this machine: one
process pushes a timestamp, another, blocked in BLPOP, reads it, at a steady 100 per
second (the benchmark's latency step, without a task queue in between).

    .venv/bin/python bench/floor_redis.py            # redis://127.0.0.1:6379/15

Three pairs: raw sockets on both sides (the kernel and Redis alone), redis-py on both
sides (sync producer, asyncio consumer: what offload's send and worker use), and the
resident memory of an idle process that has imported asyncio and redis-py, the floor
under a Redis worker's RSS.
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import socket
import subprocess
import sys
import time

KEY = "bench:floor"
N, RATE = 1000, 100.0


def _cmd(*args: object) -> bytes:
    out = b"*%d\r\n" % len(args)
    for a in args:
        b = a if isinstance(a, bytes) else str(a).encode()
        out += b"$%d\r\n%s\r\n" % (len(b), b)
    return out


def _raw() -> socket.socket:
    s = socket.create_connection(("127.0.0.1", 6379))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    s.sendall(_cmd("SELECT", 15))
    s.recv(64)
    return s


def raw_consumer(q: mp.Queue) -> None:
    s, lat = _raw(), []
    q.put("ready")
    for _ in range(N):
        s.sendall(_cmd("BLPOP", KEY, 0))
        data = s.recv(4096)
        lat.append(time.time() - float(data.split(b"\r\n")[-2]))
    q.put(lat)


def raw_producer() -> None:
    s = _raw()
    t0 = time.perf_counter()
    for i in range(N):
        time.sleep(max(0.0, t0 + i / RATE - time.perf_counter()))
        s.sendall(_cmd("RPUSH", KEY, repr(time.time())))
        s.recv(64)


def redispy_consumer(q: mp.Queue) -> None:
    import redis.asyncio as aredis

    async def run() -> list[float]:
        r, lat = aredis.Redis(db=15), []
        await r.ping()
        q.put("ready")
        for _ in range(N):
            _, v = await r.blpop([KEY], 0)
            lat.append(time.time() - float(v))
        return lat

    q.put(asyncio.run(run()))


def redispy_producer() -> None:
    import redis

    r = redis.Redis(db=15)
    t0 = time.perf_counter()
    for i in range(N):
        time.sleep(max(0.0, t0 + i / RATE - time.perf_counter()))
        r.rpush(KEY, repr(time.time()))


_IDLE = """
import asyncio, time  # asyncio: what every asyncio worker imports (it loads ssl)
import redis.asyncio
time.sleep(1.0)
print(next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmRSS")))
"""


def idle_rss() -> float:
    """VmRSS (MB) of a fresh interpreter that has imported asyncio and redis-py."""
    out = subprocess.run([sys.executable, "-c", _IDLE], capture_output=True, text=True)
    return int(out.stdout) / 1024


def pair(consumer, producer) -> tuple[float, float]:
    q: mp.Queue = mp.Queue()
    p = mp.Process(target=consumer, args=(q,))
    p.start()
    q.get(timeout=30)
    time.sleep(0.5)
    producer()
    lat = sorted(q.get(timeout=60))
    p.join()
    return lat[len(lat) // 2] * 1000, lat[int(len(lat) * 0.99)] * 1000


def main() -> None:
    for name, c, p in (
        ("raw sockets", raw_consumer, raw_producer),
        ("redis-py (sync RPUSH, asyncio BLPOP)", redispy_consumer, redispy_producer),
    ):
        p50, p99 = pair(c, p)
        print(f"{name:40s} p50 {p50:.3f} ms  p99 {p99:.3f} ms")
    print(f"{'idle process with asyncio + redis-py':40s} RSS {idle_rss():.1f} MB")


if __name__ == "__main__":
    sys.exit(main())
