"""huey: SqliteHuey (``--url sqlite:///path``) or RedisHuey (``--url redis://...``).

Worker: ``huey_consumer peer_huey.huey -w 1 -k thread -C`` (one process, one worker thread,
periodic tasks off). SQLite polls: ``-d 0.005 -m 0.005`` (5 ms; huey's default starts at
0.1 s and backs off to 10 s). Redis blocks on BRPOP. Results storage off. No bulk API.
"""

from __future__ import annotations

import sys
import time

from _common import BODY, REC, Peer, bench_url, main, redis_flush, sync_paced

URL = bench_url("sqlite:////tmp/bench-huey.db")
SQLITE = URL.startswith("sqlite")
PATH = URL.split("://", 1)[1][1:] if SQLITE else ""


def _make_huey():
    from huey import RedisHuey, SqliteHuey

    if SQLITE:
        return SqliteHuey("bench", filename=PATH, results=False)
    return RedisHuey("bench", url=URL, results=False)


huey = _make_huey()


@huey.task()
def noop(sent: float = 0.0) -> None:
    if BODY:
        BODY.sync()
    REC.hit(sent)


class HueyPeer(Peer):
    def __init__(self) -> None:
        self.url = URL
        self.name = "huey (SqliteHuey)" if SQLITE else "huey (RedisHuey)"
        self.worker_note = "1 process, 1 worker thread" + (", 5 ms polling" if SQLITE else "")
        self.tuned_note = self.worker_note.replace("1 worker thread", "32 worker threads")

    def setup(self) -> None:
        if SQLITE:
            huey.storage.flush_queue()
            huey.storage.flush_schedule()
        else:
            redis_flush(URL)

    teardown = setup

    def enqueue(self, n: int) -> float:
        noop(0.0)  # connect / create tables outside the timing
        t = time.perf_counter()
        for _ in range(n):
            noop(0.0)
        return time.perf_counter() - t

    def paced(self, n: int, rate: float) -> None:
        sync_paced(noop, n, rate)

    def ping(self) -> None:
        noop(-1.0)

    def worker_cmd(self) -> list[str]:
        delay = ["-d", "0.005", "-m", "0.005"] if SQLITE else []
        return [sys.executable, "-m", "huey.bin.huey_consumer", "peer_huey.huey",
                "-w", "1", "-k", "thread", "-C", *delay]

    def tuned_cmd(self) -> list[str]:
        cmd = self.worker_cmd()
        cmd[cmd.index("-w") + 1] = "32"
        return cmd


def make(args):
    return HueyPeer()


if __name__ == "__main__":
    import peer_huey

    main(peer_huey.make, URL)
