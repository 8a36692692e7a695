"""procrastinate on PostgreSQL (psycopg 3 connector), in its own schema
``procrastinate_bench`` (dropped after each step). Task: an ``async def`` no-op. Worker:
``procrastinate worker --concurrency 10`` (one process). Bulk: ``batch_defer`` per 1,000.
"""

from __future__ import annotations

import sys
import time

import procrastinate
from _common import BODY, REC, Peer, bench_url, main, pg_dsn, pg_exec, sync_paced

URL = bench_url("postgresql://postgres@127.0.0.1:5432/test")
SCHEMA = "procrastinate_bench"
DSN = pg_dsn(URL, SCHEMA)
app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=DSN))


@app.task(name="noop", queue="bench")
async def noop(sent: float = 0.0) -> None:
    if BODY:
        await BODY.run()
    REC.hit(sent)


class ProcrastinatePeer(Peer):
    name = "procrastinate"
    worker_note = "1 process, --concurrency 10, async task"
    tuned_note = "1 process, --concurrency 256, async task"
    bulk_note = "batch_defer, 1,000 per call"
    url = URL

    def setup(self) -> None:
        pg_exec(URL, f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE", f"CREATE SCHEMA {SCHEMA}")
        with app.open():
            app.schema_manager.apply_schema()

    def teardown(self) -> None:
        pg_exec(URL, f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE")

    def enqueue(self, n: int) -> float:
        with app.open():
            noop.defer(sent=0.0)
            t = time.perf_counter()
            for _ in range(n):
                noop.defer(sent=0.0)
            return time.perf_counter() - t

    def bulk(self, n: int) -> float:
        with app.open():
            t = time.perf_counter()
            for i in range(0, n, 1000):
                noop.batch_defer(*[{"sent": 0.0}] * min(1000, n - i))
            return time.perf_counter() - t

    def ping(self) -> None:
        with app.open():
            noop.defer(sent=-1.0)

    def paced(self, n: int, rate: float) -> None:
        with app.open():
            sync_paced(lambda s: noop.defer(sent=s), n, rate)

    def worker_cmd(self) -> list[str]:
        return [sys.executable, "-m", "procrastinate", "--app=peer_procrastinate.app",
                "worker", "--concurrency", "10", "--queues", "bench"]

    def tuned_cmd(self) -> list[str]:
        cmd = self.worker_cmd()
        cmd[cmd.index("--concurrency") + 1] = "256"
        return cmd


def make(args):
    return ProcrastinatePeer()


if __name__ == "__main__":
    import peer_procrastinate

    main(peer_procrastinate.make, URL)
