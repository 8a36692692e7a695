"""Raw baselines, the physical limit of a durable synchronous send from one client
(``enqueue`` step only), chosen by ``--url``:

* ``redis://``: redis-py (hiredis) plain ``LPUSH`` of a 100-byte value, one round trip each;
* ``postgresql://``: psycopg 3, one single-row ``INSERT`` committed per row (autocommit);
* ``sqlite:///``: stdlib sqlite3, WAL + synchronous=NORMAL (the same as offload's and
  huey's default), one single-row ``INSERT`` + ``COMMIT`` per row.
"""

from __future__ import annotations

import os
import sqlite3
import time

from _common import Peer, bench_url, main, pg_exec, redis_flush

URL = bench_url("redis://127.0.0.1:6379/15")
VALUE = b"x" * 100


class Baseline(Peer):
    def __init__(self) -> None:
        self.url = URL
        self.kind = URL.split(":", 1)[0]
        self.name = {"redis": "redis-py LPUSH", "postgresql": "Postgres INSERT+commit",
                     "sqlite": "sqlite3 INSERT+commit"}[self.kind]

    def setup(self) -> None:
        if self.kind == "redis":
            redis_flush(URL)
        elif self.kind == "postgresql":
            pg_exec(URL, "DROP SCHEMA IF EXISTS bench_baseline CASCADE",
                    "CREATE SCHEMA bench_baseline",
                    "CREATE TABLE bench_baseline.t (id bigserial PRIMARY KEY, v bytea)")
        else:
            self.path = URL.split("://", 1)[1][1:]
            for s in ("", "-wal", "-shm"):
                if os.path.exists(self.path + s):
                    os.remove(self.path + s)

    def teardown(self) -> None:
        if self.kind == "postgresql":
            pg_exec(URL, "DROP SCHEMA IF EXISTS bench_baseline CASCADE")
        else:
            self.setup()

    def enqueue(self, n: int) -> float:
        if self.kind == "redis":
            import redis

            r = redis.Redis.from_url(URL)
            r.lpush("bench:baseline", VALUE)
            t = time.perf_counter()
            for _ in range(n):
                r.lpush("bench:baseline", VALUE)
            return time.perf_counter() - t
        if self.kind == "postgresql":
            import psycopg

            with psycopg.connect(URL, autocommit=True) as conn:
                q = "INSERT INTO bench_baseline.t (v) VALUES (%s)"
                conn.execute(q, (VALUE,), prepare=True)
                t = time.perf_counter()
                for _ in range(n):
                    conn.execute(q, (VALUE,), prepare=True)
                return time.perf_counter() - t
        conn = sqlite3.connect(self.path, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v BLOB)")
        t = time.perf_counter()
        for _ in range(n):
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("INSERT INTO t (v) VALUES (?)", (VALUE,))
            conn.execute("COMMIT")
        el = time.perf_counter() - t
        conn.close()
        return el


def make(args):
    return Baseline()


if __name__ == "__main__":
    import baseline

    main(baseline.make, URL)
