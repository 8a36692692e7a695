"""offload's side of the benchmark, speaking the same protocol as ``bench/peers/*.py``:

    .venv/bin/python bench/offload_bench.py STEP --url BROKER_URL [--n N]

STEP: ``enqueue`` (``noop.send`` one by one), ``bulk`` (``noop.send_many``, 1,000 per
call), ``process`` (prefill N with send_many, one ``offload worker -c 256`` process, rate
from the tasks' own clock), ``latency`` (idle RSS after 3 s, then N sends at a steady rate)
and ``backlog`` (prefill ``--backlog`` tasks, time the first min(backlog, N) of them).
``--flavor sync`` uses the plain-function task (threads) instead of the async one.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH / "peers"))

from _common import Peer, Step, pg_exec, redis_flush, run_step, sync_paced  # noqa: E402


class OffloadPeer(Peer):
    worker_cwd = str(ROOT)

    def __init__(self, url: str, flavor: str = "", backlog_budget: float = 150.0,
                 concurrency: int | None = 256) -> None:
        self.base_url = url
        self.kind = url.split(":", 1)[0]
        sync = "sync" in flavor.split("-")
        self.task_name = "noop_sync" if sync else "noop"
        self.name = "offload" + (" (sync task)" if sync else "")
        self.concurrency = concurrency
        c = f"-c {concurrency}" if concurrency else "default concurrency"
        loop = os.environ.get("OFFLOAD_LOOP", "auto")
        if loop == "auto":  # what offload.worker.runner.new_loop picks in the worker's venv
            loop = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"
        # the worker's broker helper (offload/worker/brokerhost.py), where --broker-process
        # auto (the default) starts one: SQLite, async tasks, 2 cores or more
        helper = (self.kind == "sqlite" and not sync and (os.cpu_count() or 1) >= 2
                  and os.environ.get("OFFLOAD_BROKER_PROCESS", "auto") in ("auto", "on"))
        self.worker_note = (f"1 process{' + its broker helper' if helper else ''}, {c}, "
                            f"{loop} loop, " + ("`def` task on threads" if sync
                                                else "`async def` task"))
        self.bulk_note = "send_many, 1,000 per call"
        self.backlog_budget = backlog_budget
        self.tmp = tempfile.mkdtemp(prefix="bench-offload-")
        self.url = url
        self.app = None
        self._seq = 0

    def _fresh(self) -> None:
        if self.app is not None:
            self.app.close()
        if self.kind == "sqlite":
            self._seq += 1
            self.url = f"sqlite:///{self.tmp}/b{self._seq}.db"
        elif self.kind.startswith("redis"):
            redis_flush(self.base_url.split("?", 1)[0])
            self.url = self.base_url
        else:
            schema = self.base_url.split("schema=", 1)[1].split("&", 1)[0]
            pg_exec(self.base_url.split("?", 1)[0], f"DROP SCHEMA IF EXISTS {schema} CASCADE")
            self.url = self.base_url
        os.environ["OFFLOAD_BROKER"] = self.url
        import bench_app

        from offload import App

        app = App("bench", broker=self.url)
        for tf in bench_app.app.tasks.values():
            app.task(name=tf.name, queue=tf.queue)(tf.fn)
        self.app = app
        self.task = app.get_task(self.task_name)
        app.open()

    def setup(self) -> None:
        self._fresh()

    def teardown(self) -> None:
        if self.app is not None:
            self.app.close()
            self.app = None
        if self.kind == "sqlite":
            shutil.rmtree(self.tmp, ignore_errors=True)
            os.makedirs(self.tmp, exist_ok=True)
        elif self.kind.startswith("redis"):
            redis_flush(self.base_url.split("?", 1)[0])
        else:
            schema = self.base_url.split("schema=", 1)[1].split("&", 1)[0]
            pg_exec(self.base_url.split("?", 1)[0], f"DROP SCHEMA IF EXISTS {schema} CASCADE")

    def enqueue(self, n: int) -> float:
        send = self.task.send
        send(0.0)
        t = time.perf_counter()
        for _ in range(n):
            send(0.0)
        return time.perf_counter() - t

    def bulk(self, n: int) -> float:
        calls = [((0.0,), {})] * 1000
        t = time.perf_counter()
        for i in range(0, n, 1000):
            self.task.send_many(calls[: min(1000, n - i)])
        return time.perf_counter() - t

    def prefill_budgeted(self, n: int) -> int:
        """Bulk-enqueue up to n; if the projected time exceeds the budget, stop at 200,000
        (or what fits). Returns how many were queued."""
        calls = [((0.0,), {})] * 1000
        t = time.perf_counter()
        done = 0
        target = n
        while done < target:
            k = min(1000, target - done)
            self.task.send_many(calls[:k])
            done += k
            if done == 20000 and target > 200000:
                projected = (time.perf_counter() - t) * target / done
                if projected > self.backlog_budget:
                    target = 200000
        return done

    def paced(self, n: int, rate: float) -> None:
        sync_paced(self.task.send, n, rate)

    def ping(self) -> None:
        self.task.send(-1.0)

    def worker_cmd(self) -> list[str]:
        c = ["-c", str(self.concurrency)] if self.concurrency else []
        return [sys.executable, "-m", "offload", "worker", "bench.bench_app:app", *c]

    def worker_env(self) -> dict[str, str]:
        # $BENCH_OFFLOAD_SRC: another checkout's src/ for the worker, for an A/B run
        path = [os.environ["BENCH_OFFLOAD_SRC"]] if os.environ.get("BENCH_OFFLOAD_SRC") else []
        return {"OFFLOAD_BROKER": self.url, "PYTHONPATH": os.pathsep.join([*path, str(ROOT)])}


def backlog_step(peer: OffloadPeer, backlog: int, n: int, timeout: float) -> dict:
    """processed/s with ``backlog`` tasks already queued: the first min(backlog, n) tasks."""
    from _common import Worker, wait_file

    res: dict = {"system": peer.name, "step": "backlog", "backlog": backlog}
    tmp = tempfile.mkdtemp(prefix="bench-offload-backlog-")
    out = os.path.join(tmp, "out.json")
    worker = None
    peer.setup()
    try:
        t = time.time()
        queued = peer.prefill_budgeted(backlog)
        res["prefill_s"] = round(time.time() - t, 1)
        res["queued"] = queued
        measured = min(queued, n)
        res["measured"] = measured
        worker = Worker(peer, out, measured)
        wait_file(out, timeout, worker)
        with open(out) as f:
            rec = json.load(f)
        span = rec["last"] - rec["first"]
        res["rate"] = (rec["count"] - 1) / span if span > 0 else float("nan")
    except Step as exc:
        res["error"] = str(exc)
    except Exception as exc:
        res["error"] = f"{type(exc).__name__}: {exc}"[:400]
    finally:
        if worker is not None:
            worker.stop()
        try:
            peer.teardown()
        except Exception as exc:
            res.setdefault("warning", f"teardown: {exc}"[:200])
    return res


_CHAIN = ("<module>", "runpy", "(core.py)", "(cli.py)", "(runners.py)", "_run_once",
          "run_forever", "run_until_complete", "Handle._run", "(threading.py)")


def profile_step(peer: OffloadPeer, n: int, timeout: float) -> dict:
    """py-spy (``$BENCH_PYSPY``) samples the worker while it processes a prefilled queue;
    returns the top functions by own time and by total time."""
    import signal
    import subprocess
    from collections import Counter

    from _common import Worker, wait_file

    res: dict = {"system": peer.name, "step": "profile"}
    spy = os.environ.get("BENCH_PYSPY", "py-spy")
    tmp = tempfile.mkdtemp(prefix="bench-offload-prof-")
    out = os.path.join(tmp, "out.json")
    raw = os.path.join(tmp, "spy.txt")
    # a body task costs ~50x a no-op: fewer of them give as many samples
    n = max(n, 20_000 if os.environ.get("BENCH_BODY") else 100_000)
    worker = rec = None
    peer.setup()
    try:
        peer.prefill_budgeted(n)
        worker = Worker(peer, out, n)
        wait_file(out + ".started", 60, worker)  # leave the start-up (imports) out
        rec = subprocess.Popen([spy, "record", "-p", str(worker.proc.pid), "-r", "250", "-f",
                                "raw", "-o", raw, "--nonblocking",
                                *os.environ.get("BENCH_PYSPY_ARGS", "").split()],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_file(out, timeout, worker)
        rec.send_signal(signal.SIGINT)
        rec.wait(30)
        own, total, samples = Counter(), Counter(), 0
        with open(raw) as f:
            for line in f:
                stack, _, count = line.rstrip().rpartition(" ")
                if not stack:
                    continue
                c = int(count)
                frames = [fr.split(" (")[0] + " (" + fr.split(" (")[-1].split(":")[0]
                          .rsplit("/", 1)[-1] + ")" if " (" in fr else fr
                          for fr in stack.split(";")]
                samples += c
                own[frames[-1]] += c
                for fr in set(frames):
                    total[fr] += c
        what = "one-INCR" if os.environ.get("BENCH_BODY") else "no-op"
        lines = [f"py-spy, {samples} samples at 250 Hz of `{' '.join(peer.worker_cmd()[2:])}` "
                 f"while it ran {n:,} prefilled {what} tasks (from the first task's start)", "",
                 "own time:"]
        lines += [f"  {100 * c / samples:5.1f}%  {fr}" for fr, c in own.most_common(10)]
        lines += ["", "total time (incl. callees; the CLI and event-loop frames left out):"]
        lines += [f"  {100 * c / samples:5.1f}%  {fr}" for fr, c in total.most_common(80)
                  if not any(x in fr for x in _CHAIN)][:12]
        res["profile"] = "\n".join(lines)
    except Step as exc:
        res["profile"] = f"profile failed: {exc}"
    except Exception as exc:
        res["profile"] = f"profile failed: {type(exc).__name__}: {exc}"[:400]
    finally:
        if rec is not None and rec.poll() is None:
            rec.kill()
        if worker is not None:
            worker.stop()
        peer.teardown()
    return res


def floor(n: int, sync: bool, concurrency: int, loop: str = "asyncio") -> dict:
    """The body alone, no queue: ``n`` Redis INCRs with the client the tasks use, in a plain
    loop (sync) or on a bare asyncio loop with ``concurrency`` in flight (async), the
    standard library's or (``loop="uvloop"``) uvloop's."""
    import asyncio

    os.environ["BENCH_BODY"] = "incr"
    from _common import BODY_URL, Body

    body = Body(os.environ.get("BENCH_BODY_URL", BODY_URL))
    res: dict = {"system": "bare loop", "step": "floor", "n": n}
    if sync:
        body.sync()
        t = time.perf_counter()
        for _ in range(n):
            body.sync()
        res["rate"] = n / (time.perf_counter() - t)
        res["note"] = "one thread, one INCR after another"
        return res

    async def go() -> tuple[float, float]:
        left = n

        async def one() -> None:
            nonlocal left
            while left > 0:
                left -= 1
                await body.run()

        await asyncio.gather(*(body.run() for _ in range(concurrency)))  # connect them all
        t, cpu = time.perf_counter(), time.process_time()
        await asyncio.gather(*(one() for _ in range(concurrency)))
        return time.perf_counter() - t, time.process_time() - cpu

    if loop == "uvloop":
        import uvloop

        ev = uvloop.new_event_loop()
        try:
            wall, cpu = ev.run_until_complete(go())
        finally:
            ev.close()
    else:
        wall, cpu = asyncio.run(go())
    res["rate"] = n / wall
    res["cpu_us"] = 1e6 * cpu / n  # CPU per INCR (bench/cpu_budget.py)
    res["concurrency"] = concurrency
    res["note"] = f"{loop}, {concurrency} in flight"
    return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("step", choices=["enqueue", "bulk", "process", "latency", "backlog", "profile",
                                     "body", "floor"])
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--url", required=True)
    ap.add_argument("--rate", type=float, default=100.0)
    ap.add_argument("--timeout", type=float, default=300.0)
    ap.add_argument("--backlog", type=int, default=1000)
    ap.add_argument("--backlog-budget", type=float, default=150.0)
    ap.add_argument("--flavor", default="", help="sync: the `def` task (default: async)")
    ap.add_argument("--loop", choices=["asyncio", "uvloop"], default="asyncio",
                    help="the floor's event loop (async floors only)")
    ap.add_argument("--concurrency", "-c", type=int, default=None,
                    help="the worker's -c (default: 256 for no-op steps, the worker's own "
                         "default for the body step)")
    args = ap.parse_args()
    conc = args.concurrency
    if conc is None and args.step not in ("body", "floor"):
        conc = 256
    peer = OffloadPeer(args.url, args.flavor, args.backlog_budget, conc)
    if args.step == "floor":
        res = floor(args.n, "sync" in args.flavor.split("-"), conc or 1, args.loop)
    elif args.step == "profile":
        res = profile_step(peer, args.n, args.timeout)
    elif args.step == "backlog":
        # a small backlog is over in a few ms: take the median of 5 runs
        runs = [backlog_step(peer, args.backlog, args.n, args.timeout)
                for _ in range(5 if args.backlog <= 10_000 else 1)]
        ok = sorted((r for r in runs if "error" not in r), key=lambda r: r["rate"])
        res = ok[len(ok) // 2] if ok else runs[0]
        if len(runs) > 1 and ok:
            res["runs"] = [round(r["rate"]) for r in ok]
    else:
        res = run_step(peer, args.step, args.n, args.rate, args.timeout)
    sys.stdout.write(json.dumps(res) + "\n")


if __name__ == "__main__":
    main()
