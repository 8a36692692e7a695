"""The app of the autoscaling and rolling-deploy tests: ``tests.services.scaleapp:app``.

Each run of ``step(n)`` writes ``n`` into an idempotent ledger on the broker's own server
(``$SCALE_LEDGER``: ``redis://...#KEY``, a set and a hash, or ``postgresql://...#TABLE``):
a task is lost when its ``n`` is missing, and which process ran it is kept with it.
``$SCALE_BROKEN``, when it names a file that exists, makes importing this module fail: a
broken deploy for the reload test. ``$SCALE_NEWER``, when it names a file that exists,
adds the task function ``newer``: the code of a newer deploy, which older workers lack.
"""

from __future__ import annotations

import os
import threading
import time

from offload import App, Retry

if os.environ.get("SCALE_BROKEN") and os.path.exists(os.environ["SCALE_BROKEN"]):
    raise RuntimeError("this deploy is broken (SCALE_BROKEN exists)")

app = App("scale", broker=os.environ.get("OFFLOAD_BROKER", "sqlite:///scale.db"))
app.queue("work", retry=Retry(limit=3, min_backoff=0.05, max_backoff=0.1), lease=5)

_local = threading.local()


def _connect() -> object:
    url, _, name = os.environ["SCALE_LEDGER"].partition("#")
    if url.startswith("redis"):
        import redis

        return ("redis", redis.Redis.from_url(url), name)
    import psycopg

    return ("postgres", psycopg.connect(url, autocommit=True), name)


def record(n: int) -> None:
    """Write ``n`` (and this process's pid) into the ledger; a second run changes nothing
    but the run count."""
    conn = getattr(_local, "conn", None)
    if conn is None:
        conn = _local.conn = _connect()
    kind, client, name = conn
    if kind == "redis":
        pipe = client.pipeline(transaction=False)
        pipe.sadd(name, n)
        pipe.hsetnx(f"{name}:pid", n, os.getpid())
        pipe.incr(f"{name}:runs")
        pipe.execute()
    else:
        client.execute(
            f"INSERT INTO {name} (n, pid, runs) VALUES (%s, %s, 1) "
            f"ON CONFLICT (n) DO UPDATE SET runs = {name}.runs + 1",
            (n, os.getpid()),
        )


@app.task(queue="work", name="step")
def step(n: int, seconds: float = 0.0) -> None:
    """One unit of work: ``seconds`` of waiting (an I/O call), then the ledger entry."""
    if seconds:
        time.sleep(seconds)
    record(n)


NEWER_BASE = 1_000_000  # ``newer(n)`` records NEWER_BASE + n in the ledger

if os.environ.get("SCALE_NEWER") and os.path.exists(os.environ["SCALE_NEWER"]):

    @app.task(queue="work", name="newer")
    def newer(n: int) -> None:
        """Only the newer deploy has this function."""
        record(NEWER_BASE + n)
