"""The task bodies every system runs (stdlib + redis-py: imported in each peer's venv).

``noop`` and ``cpu`` (20 ms of CPU) both end with one Redis INCR on a counter; the task
that takes the counter to 1 stamps the start, the one that takes it to N the end, so the
rate comes from the tasks' own clock and no system's start-up is counted."""

from __future__ import annotations

import os
import time

import redis

URL = os.environ.get("PROC_BENCH_REDIS", "redis://127.0.0.1:6379/13")
_r: redis.Redis | None = None


def _conn() -> redis.Redis:
    global _r
    if _r is None or _r.connection_pool.pid != os.getpid():
        _r = redis.Redis.from_url(URL)
    return _r


def hit(n: int, sent: float) -> None:
    r = _conn()
    now = time.time()
    count = r.incr("proc:count")
    if count == 1:
        r.set("proc:first", now)
    if sent > 0:
        r.rpush("proc:lat", now - sent)
    if count >= n:
        r.set("proc:last", time.time())


def burn(seconds: float) -> None:
    end = time.process_time() + seconds
    while time.process_time() < end:
        pass
