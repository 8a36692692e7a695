"""The autoscaler and rolling deploys, measured with real ``offload run`` processes.

Three scenarios, each on a fresh broker namespace; every task stamps when it was sent,
started and finished into a Redis list (the ledger), so latency is start - send and a task
is lost when its stamp is missing:

- ``wake``: a pool with ``replicas = [0, M]``, idle; a burst of tasks arrives. Reports the
  time from the burst to the supervisor starting the first worker and to that worker
  running its first task, over ``--repeat`` bursts (the pool drains back to 0 between).
- ``step``: a steady load, then ten times that load (a 10x step); queue latency p50/p99
  per phase and the most workers seen, with ``--autoscale`` and without it (the pool's
  minimum, one worker).
- ``reload``: a steady load with a SIGHUP in the middle; throughput per 0.5 s (its dip)
  and latency p99 before and around the reload, and the lost count.

    .venv/bin/python bench/bench_autoscale.py --quick           # a smoke run, under a minute
    .venv/bin/python bench/bench_autoscale.py                   # the full run (~5 min)
    .venv/bin/python bench/bench_autoscale.py --scenarios step --broker postgres

Needs Redis on 127.0.0.1:6379 (database 14, keys under a fresh prefix, deleted after) and,
for ``--broker postgres``, PostgreSQL on 127.0.0.1:5432 (database ``test``, a fresh schema,
dropped after). Prints a table per scenario and one JSON line with every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid

from offload import App

HERE = pathlib.Path(__file__).resolve().parent
REDIS = "redis://127.0.0.1:6379/14"  # not 15, which the peers' benchmarks flush
PG = "postgresql://postgres@127.0.0.1:5432/test"

app = App("benchscale", broker=os.environ.get("BENCH_BROKER", f"{REDIS}?prefix=benchscale"))
app.queue("work", lease=10)
_client = None


@app.task(queue="work", name="benchscale.work")
def work(n: int, sent: float, seconds: float) -> None:
    """``seconds`` of waiting (an I/O call), stamped into the ledger."""
    global _client
    started = time.time()
    time.sleep(seconds)
    if _client is None:
        import redis

        _client = redis.Redis.from_url(REDIS)
    key = os.environ["BENCH_LEDGER"]
    _client.rpush(key, f"{n} {sent} {started} {time.time()} {os.getpid()}")


# -- the harness ---------------------------------------------------------------------------


class Setup:
    """One namespace: the broker URL, the ledger key, a topology, the supervisor."""

    def __init__(self, broker: str, tmp: str, replicas: tuple[int, int], conc: int, cool: float):
        ns = "bs" + uuid.uuid4().hex[:10]
        self.kind = broker
        self.url = f"{REDIS}?prefix={ns}" if broker == "redis" else f"{PG}?schema={ns}"
        self.ns, self.ledger = ns, f"{ns}:ledger"
        self.topology = os.path.join(tmp, f"{ns}.toml")
        with open(self.topology, "w") as f:
            f.write(
                f'[pools.work]\nservices = ["default"]\nmachine = "e2-standard-2"\n'
                f"replicas = [{replicas[0]}, {replicas[1]}]\nconcurrency = {conc}\n"
                f"target_latency = 0.5\ncooldown = {cool}\n"
            )
        os.environ["BENCH_BROKER"], os.environ["BENCH_LEDGER"] = self.url, self.ledger
        self.app = App("benchscale", broker=self.url)
        self.app.queue("work", lease=10)
        self.send = self.app.task(queue="work", name="benchscale.work")(work.fn)
        self.lines: list[tuple[float, str]] = []
        self.proc: subprocess.Popen[bytes] | None = None
        self.sent = 0

    def start(self, autoscale: bool, ready: str = " worker pid ") -> None:
        """``offload run`` on this namespace; returns once its log shows ``ready`` (by
        default: a worker is up)."""
        argv = [sys.executable, "-m", "offload", "run", "bench_autoscale:app"]
        argv += ["--topology", self.topology, "--grace", "10"]
        argv += ["--autoscale"] if autoscale else []
        env = {**os.environ, "OFFLOAD_TOPOLOGY": "", "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            argv, cwd=HERE, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )

        def read() -> None:
            assert self.proc is not None and self.proc.stdout is not None
            for raw in self.proc.stdout:
                self.lines.append((time.time(), raw.decode("utf-8", "replace").rstrip()))

        threading.Thread(target=read, daemon=True).start()
        self.wait(lambda: self.seen(ready), 30)

    def seen(self, text: str, after: float = 0.0) -> list[float]:
        return [t for t, line in list(self.lines) if text in line and t >= after]

    def wait(self, pred, timeout: float) -> None:
        end = time.monotonic() + timeout
        while not pred():
            if time.monotonic() > end:
                tail = "\n".join(x for _, x in self.lines[-20:])
                raise SystemExit(f"timed out after {timeout}s; last lines:\n{tail}")
            time.sleep(0.05)

    def burst(self, count: int, seconds: float) -> None:
        now = time.time()
        self.send.send_many([((self.sent + i, now, seconds), {}) for i in range(count)])
        self.sent += count

    def load(self, rate: float, duration: float, seconds: float) -> None:
        """``rate`` tasks/s for ``duration`` seconds, sent in 20 ms ticks."""
        tick, owed = 0.02, 0.0
        end = time.monotonic() + duration
        while time.monotonic() < end:
            owed += rate * tick
            if owed >= 1:
                self.burst(int(owed), seconds)
                owed -= int(owed)
            time.sleep(tick)

    def stamps(self) -> list[tuple[int, float, float, float, int]]:
        import redis

        r = redis.Redis.from_url(REDIS)
        try:
            rows = [x.decode().split() for x in r.lrange(self.ledger, 0, -1)]
        finally:
            r.close()
        return [(int(n), float(s), float(a), float(b), int(p)) for n, s, a, b, p in rows]

    def drained(self, timeout: float = 60) -> list[tuple[int, float, float, float, int]]:
        self.wait(lambda: len({x[0] for x in self.stamps()}) >= self.sent, timeout)
        return self.stamps()

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.app.close()
        import redis

        r = redis.Redis.from_url(REDIS)
        keys = list(r.scan_iter(match=f"*{self.ns}*", count=1000))
        if keys:
            r.delete(*keys)
        r.close()
        if self.kind == "postgres":
            import psycopg

            with psycopg.connect(PG, autocommit=True) as c:
                c.execute(f'DROP SCHEMA IF EXISTS "{self.ns}" CASCADE')


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


# -- the scenarios --------------------------------------------------------------------------


def wake(args, tmp: str) -> dict:
    s = Setup(args.broker, tmp, (0, 3), 4, cool=1.0)
    out = {"started_s": [], "first_task_s": []}
    try:
        s.start(autoscale=True, ready="[offload] autoscale work:")  # min 0: no worker yet
        for _ in range(args.repeat):
            t0 = time.time()
            before = len(s.stamps())
            s.burst(args.burst, 0.02)
            started = lambda t0=t0: s.seen("[offload] started work.", after=t0)  # noqa: E731
            s.wait(started, 10)
            out["started_s"].append(started()[0] - t0)
            s.wait(lambda before=before: len(s.stamps()) > before, 10)
            first = min(a for n, _s, a, _b, _p in s.stamps()[before:])
            out["first_task_s"].append(first - t0)
            s.drained()
            s.wait(lambda t0=t0: s.seen("→0 workers", after=t0), 30)
            time.sleep(0.5)
        out["lost"] = s.sent - len({x[0] for x in s.stamps()})
    finally:
        s.close()
    return out


def step(args, tmp: str, autoscale: bool) -> dict:
    s = Setup(args.broker, tmp, (1, 4), 4, cool=2.0)
    try:
        s.start(autoscale)
        t0 = time.time()
        s.load(args.rate, args.phase, 0.02)
        t1 = time.time()
        s.load(args.rate * 10, args.phase, 0.02)
        rows = s.drained(120)
        lat_base = [a - snt for _n, snt, a, _b, _p in rows if snt < t1]
        lat_step = [a - snt for _n, snt, a, _b, _p in rows if snt >= t1]
        decisions = [line for t, line in s.lines if "autoscale work: " in line and "→" in line]
        workers = 1
        for line in decisions:
            workers = max(workers, int(line.split("→")[1].split()[0]))
        return {
            "autoscale": autoscale,
            "base_p50": pct(lat_base, 0.5),
            "base_p99": pct(lat_base, 0.99),
            "step_p50": pct(lat_step, 0.5),
            "step_p99": pct(lat_step, 0.99),
            "max_workers": workers,
            "pids": len({p for *_x, p in rows}),
            "decisions": [line.split("autoscale ", 1)[1] for line in decisions],
            "lost": s.sent - len({x[0] for x in rows}),
            "took_s": time.time() - t0,
        }
    finally:
        s.close()


def reload(args, tmp: str) -> dict:
    s = Setup(args.broker, tmp, (2, 2), 8, cool=60.0)
    try:
        s.start(autoscale=False)
        s.wait(lambda: len(s.seen(" worker pid ")) >= 2, 30)
        third = args.phase
        sender = threading.Thread(target=s.load, args=(args.rate * 4, 3 * third, 0.01))
        t0 = time.time()
        sender.start()
        time.sleep(third)
        hup = time.time()
        assert s.proc is not None
        s.proc.send_signal(signal.SIGHUP)
        sender.join()
        rows = s.drained(120)
        s.wait(lambda: s.seen("reload done"), 60)
        up = s.seen("reload: new worker(s) up")
        done = s.seen("reload done")
        ends = sorted(b for *_x, b, _p in rows)
        buckets: dict[int, int] = {}
        for b in ends:
            buckets[int((b - t0) / 0.5)] = buckets.get(int((b - t0) / 0.5), 0) + 1
        steady = [buckets.get(i, 0) for i in range(1, int(third / 0.5))]
        around = [
            buckets.get(i, 0) for i in range(int((hup - t0) / 0.5), int((done[0] - t0) / 0.5) + 1)
        ]
        before = [a - snt for _n, snt, a, _b, _p in rows if snt < hup]
        during = [a - snt for _n, snt, a, _b, _p in rows if hup <= snt <= done[0]]
        base = statistics.median(steady) if steady else float("nan")
        return {
            "rate": args.rate * 4,
            "reload_s": (up[0] - hup) if up else None,
            "old_drained_s": done[0] - hup,
            "throughput_per_s_steady": base * 2,
            "throughput_per_s_min_during": min(around) * 2 if around else None,
            "dip": 1 - (min(around) / base) if around and base else None,
            "p99_before": pct(before, 0.99),
            "p99_during": pct(during, 0.99),
            "lost": s.sent - len({x[0] for x in rows}),
        }
    finally:
        s.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--broker", choices=("redis", "postgres"), default="redis")
    ap.add_argument("--scenarios", default="wake,step,reload")
    ap.add_argument("--quick", action="store_true", help="a smoke run (under a minute)")
    ap.add_argument("--repeat", type=int, default=5, help="bursts in 'wake'")
    ap.add_argument("--burst", type=int, default=200, help="tasks per burst in 'wake'")
    ap.add_argument("--rate", type=float, default=40.0, help="base tasks/s in 'step'")
    ap.add_argument("--phase", type=float, default=20.0, help="seconds per load phase")
    args = ap.parse_args()
    if args.quick:
        args.repeat, args.phase = 1, 3.0
    results: dict = {"broker": args.broker, "quick": args.quick}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.scenarios.split(","):
            if name == "wake":
                results["wake"] = r = wake(args, tmp)
                print(
                    f"wake: first worker started {pct(r['started_s'], 0.5):.2f}s after the "
                    f"burst (median of {len(r['started_s'])}), first task ran after "
                    f"{pct(r['first_task_s'], 0.5):.2f}s; lost {r['lost']}"
                )
            elif name == "step":
                results["step"] = [step(args, tmp, False), step(args, tmp, True)]
                for r in results["step"]:
                    label = "--autoscale" if r["autoscale"] else "fixed (min)"
                    print(
                        f"step {args.rate:g}->{args.rate * 10:g}/s {label:12}: latency p50/p99 "
                        f"before {r['base_p50'] * 1000:.0f}/{r['base_p99'] * 1000:.0f} ms, "
                        f"during the step {r['step_p50'] * 1000:.0f}/{r['step_p99'] * 1000:.0f}"
                        f" ms; {r['max_workers']} worker(s) at most; lost {r['lost']}"
                    )
            elif name == "reload":
                results["reload"] = r = reload(args, tmp)
                print(
                    f"reload at {r['rate']:g}/s: new workers up {r['reload_s']:.2f}s after "
                    f"SIGHUP, old drained after {r['old_drained_s']:.2f}s; throughput "
                    f"{r['throughput_per_s_steady']:.0f}/s steady, "
                    f"{r['throughput_per_s_min_during']}/s at worst during it; latency p99 "
                    f"{r['p99_before'] * 1000:.0f} ms before, {r['p99_during'] * 1000:.0f} ms "
                    f"during; lost {r['lost']}"
                )
            else:
                raise SystemExit(f"--scenarios: {name!r} is not wake, step or reload")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
