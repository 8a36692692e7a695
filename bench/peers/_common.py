"""Shared by every peer script (stdlib only: it runs inside each peer's own virtualenv).

Two halves:

* the *task side* (:data:`REC`): every no-op task of every system calls ``REC.hit(sent)``.
  It keeps a cheap per-process record (first task start, last task end, count, and the
  enqueue-to-start latency ``time.time() - sent`` when the producer stamped one) and writes
  it to ``$BENCH_OUT`` as JSON once ``$BENCH_EXPECT`` tasks have run. A task sent with
  ``sent < 0`` is a warm-up ping: it only touches ``$BENCH_OUT.ready``.
  With ``$BENCH_BODY`` set, every task first does the real body (:data:`BODY`, one Redis
  ``INCR``).
* the *harness side* (:func:`main`): the tiny protocol ``peer_x.py STEP --n N --url URL``
  printing one JSON line, where STEP is ``enqueue`` (one by one), ``bulk``, ``process``
  (prefill N, one worker process, rate from the tasks' own clock), ``body`` (the same
  with the real body; ``--flavor tuned``: the peer's tuned worker) or ``latency`` (idle
  worker RSS after 3 s, then N sends at a steady rate, p50/p99 of enqueue-to-start).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


# -- task side -------------------------------------------------------------------------


class Recorder:
    """What the no-op tasks record, per worker process. Thread-safe and cheap."""

    def __init__(self) -> None:
        self.out = os.environ.get("BENCH_OUT")
        self.expect = int(os.environ.get("BENCH_EXPECT", "0") or 0)
        self.lock = threading.Lock()
        self.count = 0
        self.first = 0.0
        self.lat: list[float] = []
        self.done = False

    def hit(self, sent: float = 0.0) -> None:
        now = time.time()
        if sent is not None and sent < 0:
            if self.out:
                Path(self.out + ".ready").touch()
            return
        with self.lock:
            if self.count == 0:
                self.first = now
                if self.out:
                    Path(self.out + ".started").touch()
            if sent:
                self.lat.append(now - sent)
            self.count += 1
            if self.count == self.expect and self.out and not self.done:
                self.done = True
                end = time.time()
                tmp = self.out + ".tmp"
                with open(tmp, "w") as f:
                    json.dump({"first": self.first, "last": end, "count": self.count,
                               "lat": self.lat}, f)
                os.replace(tmp, self.out)


REC = Recorder()


class Body:
    """The real task body (``$BENCH_BODY=incr``): one Redis ``INCR`` round trip with
    redis-py, the same for every system, sync (:meth:`sync`, one client whose connection
    pool gives each thread its own connection) or async (:meth:`run`, one
    ``redis.asyncio`` client per event loop). Tasks call it only when the mode is on, so
    the no-op figures pay nothing for it: ``if BODY: BODY.sync()``."""

    KEY = "bench:body"

    def __init__(self, url: str) -> None:
        self.url = url
        self._sync = None
        self._async: dict[int, Any] = {}
        self._lock = threading.Lock()

    def sync(self) -> None:
        r = self._sync
        if r is None:
            with self._lock:
                if self._sync is None:
                    import redis

                    self._sync = redis.Redis.from_url(self.url, max_connections=4096)
                r = self._sync
        r.incr(self.KEY)

    async def run(self) -> None:
        import asyncio

        loop = id(asyncio.get_running_loop())
        r = self._async.get(loop)
        if r is None:
            import redis.asyncio as aredis

            r = self._async[loop] = aredis.Redis.from_url(self.url, max_connections=4096)
        await r.incr(self.KEY)


BODY_URL = "redis://127.0.0.1:6379/14"  # its own database: the queue's FLUSHDB leaves it be
BODY: Body | None = Body(os.environ.get("BENCH_BODY_URL", BODY_URL)) if os.environ.get(
    "BENCH_BODY") else None


# -- harness side ----------------------------------------------------------------------


class Step(Exception):
    """A step cannot be measured for this system (printed as the reason)."""


class Peer:
    """One system. Subclasses fill in the blanks; unsupported steps raise :class:`Step`."""

    name = "peer"
    worker_note = ""
    tuned_note = ""
    tuned = False
    bulk_note = ""
    url = ""
    worker_cwd = str(HERE)

    def setup(self) -> None:
        """Empty the broker namespace (called before every step)."""

    def teardown(self) -> None:
        """Remove what setup created (called after every step)."""

    def enqueue(self, n: int) -> float:
        """Send n no-op tasks one by one (sent=0); return the elapsed seconds of the loop."""
        raise Step("no producer")

    def bulk(self, n: int) -> float:
        """Send n no-op tasks with the system's batch API; elapsed seconds."""
        raise Step("no bulk enqueue API")

    def prefill(self, n: int) -> None:
        """Queue n tasks as fast as possible (not timed)."""
        try:
            self.bulk(n)
        except Step:
            self.enqueue(n)

    def paced(self, n: int, rate: float) -> None:
        """Send n tasks at a steady rate, each stamped with time.time() at send."""
        raise Step("no paced producer")

    def ping(self) -> None:
        """Send one warm-up task (sent=-1)."""
        raise Step("no ping")

    def worker_cmd(self) -> list[str]:
        raise Step("no worker")

    def tuned_cmd(self) -> list[str]:
        """The worker with its concurrency raised for a body that waits on I/O (the
        ``body`` step with ``--flavor tuned``)."""
        raise Step("no concurrency setting to tune")

    def worker_env(self) -> dict[str, str]:
        return {}


def sync_paced(send: Callable[[float], Any], n: int, rate: float) -> None:
    t0 = time.perf_counter() + 0.05
    for i in range(n):
        delay = t0 + i / rate - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        send(time.time())


async def async_paced(send: Callable[[float], Any], n: int, rate: float) -> None:
    import asyncio

    t0 = time.perf_counter() + 0.05
    for i in range(n):
        delay = t0 + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        await send(time.time())


def tree_pids(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for tid in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{tid}/children") as f:
                    todo.extend(int(c) for c in f.read().split())
        except OSError:
            pass
    return out


def rss_mb(pid: int) -> tuple[float, int]:
    """VmRSS summed over the process tree of ``pid`` (MB) and the number of processes."""
    total, procs = 0, 0
    for p in tree_pids(pid):
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
                        procs += 1
        except OSError:
            pass
    return total / 1024.0, procs


class Worker:
    """One worker process (group) started by the harness, killed by its own pid group."""

    def __init__(self, peer: Peer, out: str, expect: int, env: dict[str, str] | None = None,
                 cmd: list[str] | None = None) -> None:
        extra, env = env or {}, dict(os.environ)
        env["BENCH_URL"] = peer.url
        env.update(peer.worker_env())
        env.update(extra)
        env["BENCH_OUT"] = out
        env["BENCH_EXPECT"] = str(expect)
        env["PYTHONPATH"] = str(HERE) + os.pathsep + env.get("PYTHONPATH", "")
        env.setdefault("PYTHONUNBUFFERED", "1")
        self.log = open(out + ".log", "w")  # noqa: SIM115  (closed in stop())
        self.started = time.time()
        self.proc = subprocess.Popen(
            cmd or peer.worker_cmd(), cwd=peer.worker_cwd, env=env, stdout=self.log,
            stderr=subprocess.STDOUT, start_new_session=True,
        )

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.proc.wait(5)
        self.log.close()

    def tail(self) -> str:
        try:
            with open(self.log.name) as f:
                lines = [x for x in f.read().splitlines() if x.strip()]
            return " | ".join(lines[-3:])[-400:]
        except OSError:
            return ""


def wait_file(path: str, timeout: float, worker: Worker | None = None,
              poke: Callable[[], None] | None = None) -> None:
    deadline = time.time() + timeout
    next_poke = 0.0
    while not os.path.exists(path):
        if worker is not None and not worker.alive():
            raise Step(f"worker exited ({worker.proc.returncode}): {worker.tail()}")
        if time.time() > deadline:
            extra = f": {worker.tail()}" if worker is not None else ""
            raise Step(f"timed out after {timeout:.0f}s waiting for the worker{extra}")
        if poke is not None and time.time() >= next_poke:
            poke()
            next_poke = time.time() + 0.5
        time.sleep(0.002)


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    if not xs:
        return float("nan")
    k = (len(xs) - 1) * q
    lo = int(k)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def run_step(peer: Peer, step: str, n: int, rate: float, timeout: float) -> dict[str, Any]:
    res: dict[str, Any] = {"system": peer.name, "step": step, "n": n}
    tmp = tempfile.mkdtemp(prefix=f"bench-{peer.name}-")
    out = os.path.join(tmp, "out.json")
    peer.setup()
    worker = None
    try:
        if step == "enqueue":
            res["rate"] = n / peer.enqueue(n)
        elif step == "bulk":
            res["rate"] = n / peer.bulk(n)
            if peer.bulk_note:
                res["note"] = peer.bulk_note
        elif step in ("process", "body"):
            t = time.time()
            peer.prefill(n)
            res["prefill_s"] = round(time.time() - t, 2)
            if step == "body":
                body = {"BENCH_BODY": "incr"}
                cmd = peer.tuned_cmd() if getattr(peer, "tuned", False) else None
                worker = Worker(peer, out, n, env=body, cmd=cmd)
            else:
                worker = Worker(peer, out, n)
            wait_file(out, timeout, worker)
            done_at = time.time()
            with open(out) as f:
                rec = json.load(f)
            span = rec["last"] - rec["first"]
            res["rate"] = (rec["count"] - 1) / span if span > 0 else float("nan")
            res["wall_rate"] = n / (done_at - worker.started)
            res["startup_s"] = round(rec["first"] - worker.started, 3)
            note = peer.tuned_note if getattr(peer, "tuned", False) else peer.worker_note
            if note:
                res["note"] = note
        elif step == "latency":
            worker = Worker(peer, out, n)
            wait_file(out + ".ready", min(timeout, 60), worker, poke=peer.ping)
            time.sleep(3.0)
            res["rss_mb"], res["rss_procs"] = rss_mb(worker.proc.pid)
            peer.paced(n, rate)
            wait_file(out, max(30.0, 2 * n / rate), worker)
            with open(out) as f:
                lat = json.load(f)["lat"]
            res["p50_ms"] = pct(lat, 0.50) * 1000
            res["p99_ms"] = pct(lat, 0.99) * 1000
            res["mean_ms"] = statistics.fmean(lat) * 1000
            res["samples"] = len(lat)
            if peer.worker_note:
                res["note"] = peer.worker_note
        else:
            raise Step(f"unknown step {step!r}")
    except Step as exc:
        res["error"] = str(exc)
    except Exception as exc:  # a peer's own failure: report it, the run goes on
        res["error"] = f"{type(exc).__name__}: {exc}"[:400]
    finally:
        if worker is not None:
            worker.stop()
        try:
            peer.teardown()
        except Exception as exc:
            res.setdefault("warning", f"teardown: {type(exc).__name__}: {exc}"[:200])
    return res


def bench_url(default: str) -> str:
    """The broker URL: ``--url`` on the command line (the harness) or ``$BENCH_URL`` (the
    worker process, which imports the peer module by name)."""
    argv = sys.argv
    for i, a in enumerate(argv):
        if a == "--url" and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith("--url="):
            return a.split("=", 1)[1]
    return os.environ.get("BENCH_URL", default)


def main(make: Callable[[argparse.Namespace], Peer], default_url: str) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("step", choices=["enqueue", "bulk", "process", "latency", "body"])
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--url", default=default_url)
    ap.add_argument("--rate", type=float, default=100.0)
    ap.add_argument("--timeout", type=float, default=300.0)
    ap.add_argument("--flavor", default="")
    args = ap.parse_args()
    os.environ["BENCH_URL"] = args.url
    peer = make(args)
    peer.tuned = args.flavor == "tuned"
    res = run_step(peer, args.step, args.n, args.rate, args.timeout)
    sys.stdout.write(json.dumps(res) + "\n")
    sys.stdout.flush()


def redis_flush(url: str) -> None:
    """FLUSHDB on the benchmark's own Redis database (never db 0)."""
    import redis

    r = redis.Redis.from_url(url)
    db = r.connection_pool.connection_kwargs.get("db", 0)
    if db == 0:
        raise Step(f"refusing to FLUSHDB db 0 ({url}); use a dedicated db such as /15")
    r.flushdb()
    r.close()


def pg_exec(dsn: str, *sql: str) -> None:
    """Run statements in autocommit on the benchmark's PostgreSQL (psycopg 3)."""
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        for s in sql:
            conn.execute(s)


def pg_dsn(url: str, schema: str) -> str:
    """``url`` with the search_path set to the benchmark's own schema."""
    sep = "&" if "?" in url else "?"
    return f"{url}{sep}options=-csearch_path%3D{schema}"
