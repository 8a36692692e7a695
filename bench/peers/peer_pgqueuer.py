"""pgqueuer on PostgreSQL (psycopg 3 async driver), in its own schema ``pgqueuer_bench``
(``pgq install --schema``; dropped after each step). Worker: ``PgQueuer.run(batch_size=100)``
(what ``pgq run --batch-size 100`` does; one process). Bulk: ``Queries.enqueue`` with
lists, 1,000 per call.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time

from _common import BODY, REC, Peer, async_paced, bench_url, main, pg_dsn, pg_exec

URL = bench_url("postgresql://postgres@127.0.0.1:5432/test")
SCHEMA = "pgqueuer_bench"
os.environ["PGQUEUER_SCHEMA"] = SCHEMA
DSN = pg_dsn(URL, SCHEMA)

import psycopg  # noqa: E402
from pgqueuer import PgQueuer  # noqa: E402
from pgqueuer.db import PsycopgDriver  # noqa: E402
from pgqueuer.queries import Queries  # noqa: E402


async def factory() -> PgQueuer:
    conn = await psycopg.AsyncConnection.connect(DSN, autocommit=True)
    pgq = PgQueuer(PsycopgDriver(conn))

    @pgq.entrypoint("noop")
    async def noop(job) -> None:
        if BODY:
            await BODY.run()
        REC.hit(float(job.payload))

    return pgq


class PgqueuerPeer(Peer):
    name = "pgqueuer"
    worker_note = "1 process, --batch-size 100"
    tuned_note = "1 process, --batch-size 256"
    bulk_note = "Queries.enqueue(lists), 1,000 per call"
    url = URL

    def setup(self) -> None:
        pg_exec(URL, f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE")
        import subprocess

        pgq = os.path.join(os.path.dirname(sys.executable), "pgq")
        subprocess.run([pgq, "--pg-dsn", URL, "--schema", SCHEMA, "install"], check=True,
                       capture_output=True, timeout=60)

    def teardown(self) -> None:
        pg_exec(URL, f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE")

    async def _queries(self):
        conn = await psycopg.AsyncConnection.connect(DSN, autocommit=True)
        return conn, Queries(PsycopgDriver(conn))

    def enqueue(self, n: int) -> float:
        async def go() -> float:
            conn, q = await self._queries()
            await q.enqueue("noop", b"0")
            t = time.perf_counter()
            for _ in range(n):
                await q.enqueue("noop", b"0")
            el = time.perf_counter() - t
            await conn.close()
            return el

        return asyncio.run(go())

    def bulk(self, n: int) -> float:
        async def go() -> float:
            conn, q = await self._queries()
            t = time.perf_counter()
            for i in range(0, n, 1000):
                k = min(1000, n - i)
                await q.enqueue(["noop"] * k, [b"0"] * k, [0] * k)
            el = time.perf_counter() - t
            await conn.close()
            return el

        return asyncio.run(go())

    def ping(self) -> None:
        async def go() -> None:
            conn, q = await self._queries()
            await q.enqueue("noop", b"-1")
            await conn.close()

        asyncio.run(go())

    def paced(self, n: int, rate: float) -> None:
        async def go() -> None:
            conn, q = await self._queries()
            await async_paced(lambda s: q.enqueue("noop", repr(s).encode()), n, rate)
            await conn.close()

        asyncio.run(go())

    def worker_cmd(self) -> list[str]:
        # `pgq run` of pgqueuer 1.6.0 crashes in its log set-up (level.name on a str), so
        # the worker runs PgQueuer.run() as `pgq run` would, from this module.
        return [sys.executable, "peer_pgqueuer.py", "worker"]

    def tuned_cmd(self) -> list[str]:
        return [sys.executable, "peer_pgqueuer.py", "worker", "256"]


def make(args):
    return PgqueuerPeer()


async def _worker(batch_size: int = 100) -> None:
    pgq = await factory()
    await pgq.run(batch_size=batch_size)


if __name__ == "__main__":
    import peer_pgqueuer

    if sys.argv[1:2] == ["worker"]:
        asyncio.run(peer_pgqueuer._worker(int((sys.argv[2:3] or ["100"])[0])))
    else:
        main(peer_pgqueuer.make, URL)
