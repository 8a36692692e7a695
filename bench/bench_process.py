"""The process executor against the process pools a user would pick instead, in one run on
the same Redis: Celery's prefork pool (``--pool prefork -c 2``) and RQ (two ``rq worker``
processes, a fork per job, its default).

    python bench/bench_process.py [--noop 20000] [--cpu 2000] [--json out.json]

Per system: processed/s on a prefilled queue for no-op tasks and for tasks of 20 ms of
CPU, both at concurrency 2 (offload: ``offload worker -c 2`` with the tasks in a process
service; the rate is taken from the tasks' own clock, first start to last end, so no
start-up is counted); the send-to-start latency p50/p99 of single tasks at a steady
50/s on an idle worker; and the resident memory of an idle worker and of its children.
The CPU floor is what two cores can do: 2 / 0.020 s = 100 tasks/s.

Peers come from ``bench/.venvs/{celery,rq}`` (``python bench/run.py`` makes them).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import redis

ROOT = Path(__file__).resolve().parents[1]
HERE = ROOT / "bench" / "process"
VENVS = ROOT / "bench" / ".venvs"
BROKER = "redis://127.0.0.1:6379/12"
COUNTER = "redis://127.0.0.1:6379/13"
CPU_SECONDS = 0.020


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def flush() -> None:
    for url in (BROKER, COUNTER):
        redis.Redis.from_url(url).flushdb()


def env() -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": str(HERE),
        "OFFLOAD_BROKER": BROKER,
        "CELERY_BROKER": BROKER,
        "PROC_BENCH_REDIS": COUNTER,
        "OFFLOAD_TOPOLOGY": "",
    }


def py(system: str) -> str:
    if system == "offload":
        return sys.executable
    p = VENVS / system / "bin" / "python"
    if not p.exists():
        raise SystemExit(f"{p} missing: run python bench/run.py --peers {system} once")
    return str(p)


SEND = {
    "offload": (
        "import sys, time, offload_app as a\n"
        "kind, n, arg, paced = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]\n"
        "f = a.noop if kind == 'noop' else a.cpu\n"
        "if paced == '1':\n"
        "    for _ in range(n):\n"
        "        f.send(n, time.time()); time.sleep(arg)\n"
        "else:\n"
        "    items = [((n, 0.0 if kind == 'noop' else arg), {}) for _ in range(n)]\n"
        "    for i in range(0, n, 1000): f.send_many(items[i:i + 1000])\n"
    ),
    "celery": (
        "import sys, time, celery_app as a\n"
        "kind, n, arg, paced = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]\n"
        "f = a.noop if kind == 'noop' else a.cpu\n"
        "if paced == '1':\n"
        "    for _ in range(n):\n"
        "        f.delay(n, time.time()); time.sleep(arg)\n"
        "else:\n"
        "    for _ in range(n): f.delay(n, 0.0 if kind == 'noop' else arg)\n"
    ),
    "rq": (
        "import sys, time, redis, rq, rq_jobs as j\n"
        "kind, n, arg, paced = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]\n"
        f"q = rq.Queue('proc', connection=redis.Redis.from_url('{BROKER}'))\n"
        "f = j.noop if kind == 'noop' else j.cpu\n"
        "if paced == '1':\n"
        "    for _ in range(n):\n"
        "        q.enqueue(f, n, time.time(), result_ttl=0); time.sleep(arg)\n"
        "else:\n"
        "    a = 0.0 if kind == 'noop' else arg\n"
        "    for i in range(0, n, 1000):\n"
        "        q.enqueue_many([rq.Queue.prepare_data(f, (n, a), result_ttl=0)\n"
        "                        for _ in range(min(1000, n - i))])\n"
    ),
}


def send(system: str, kind: str, n: int, arg: float, paced: bool) -> None:
    subprocess.run(
        [py(system), "-c", SEND[system], kind, str(n), str(arg), "1" if paced else "0"],
        cwd=HERE, env=env(), check=True, timeout=600,
    )


def start_workers(system: str) -> list[subprocess.Popen]:
    kw = {"cwd": HERE, "env": env(), "stdout": subprocess.DEVNULL, "stderr": subprocess.PIPE}
    if system == "offload":
        cmd = [sys.executable, "-m", "offload", "worker", "offload_app:app", "-c", "2"]
        return [subprocess.Popen(cmd, **kw)]
    if system == "celery":
        cmd = [py("celery"), "-m", "celery", "-A", "celery_app", "worker", "--pool", "prefork",
               "-c", "2", "--without-gossip", "--without-mingle", "--without-heartbeat",
               "-l", "WARNING"]
        return [subprocess.Popen(cmd, **kw)]
    cmd = [py("rq"), "-m", "rq.cli", "worker", "-u", BROKER, "proc", "-q"]
    return [subprocess.Popen(cmd, **kw) for _ in range(2)]


def stop(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(20)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def wait_done(n: int, timeout: float) -> tuple[float, float]:
    r = redis.Redis.from_url(COUNTER)
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        last = r.get("proc:last")
        if last is not None:
            return float(r.get("proc:first")), float(last)
        time.sleep(0.02)
    raise TimeoutError(f"only {r.get('proc:count')} of {n} tasks ran in {timeout}s")


def throughput(system: str, kind: str, n: int) -> float:
    flush()
    send(system, kind, n, CPU_SECONDS, paced=False)
    procs = start_workers(system)
    try:
        first, last = wait_done(n, 900)
    finally:
        stop(procs)
    return (n - 1) / (last - first)


def _children(pid: int) -> list[int]:
    out = []
    for t in Path(f"/proc/{pid}/task").iterdir():
        try:
            out += [int(c) for c in (t / "children").read_text().split()]
        except OSError:
            pass
    return out


def _rss(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return 0


def latency_and_memory(system: str, n: int = 200) -> dict:
    flush()
    procs = start_workers(system)
    try:
        send(system, "noop", 4, 0.05, paced=True)  # warm the children up
        time.sleep(2.0)
        main = procs[0].pid
        if system == "celery":  # `python -m celery` is the main process itself
            pass
        kids = [c for p in procs for c in _children(p.pid)]
        worker_rss = sum(_rss(p.pid) for p in procs)
        child_rss = [_rss(c) for c in kids]
        redis.Redis.from_url(COUNTER).flushdb()
        send(system, "noop", n, 0.02, paced=True)
        wait_done(n, 120)
        lat = sorted(float(x) for x in redis.Redis.from_url(COUNTER).lrange("proc:lat", 0, -1))
    finally:
        stop(procs)
    del main
    return {
        "p50_ms": statistics.median(lat) * 1e3,
        "p99_ms": lat[int(len(lat) * 0.99) - 1] * 1e3,
        "worker_rss_mb": worker_rss / 2**20,
        "children": len(child_rss),
        "child_rss_mb": (statistics.mean(child_rss) / 2**20) if child_rss else 0.0,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--noop", type=int, default=20_000)
    ap.add_argument("--cpu", type=int, default=2_000)
    ap.add_argument("--systems", default="offload,celery,rq")
    ap.add_argument("--rq-share", type=float, default=0.1,
                    help="RQ forks a process per job (~50/s): it runs this share of N")
    ap.add_argument("--json", dest="json_out")
    opts = ap.parse_args()
    results: dict[str, dict] = {}
    for system in opts.systems.split(","):
        res: dict = {}
        share = opts.rq_share if system == "rq" else 1.0
        n_noop, n_cpu = max(100, int(opts.noop * share)), max(100, int(opts.cpu * share))
        res["n"] = [n_noop, n_cpu]
        log(f"{system}: {n_noop} no-op tasks")
        res["noop_per_s"] = throughput(system, "noop", n_noop)
        log(f"{system}: {n_cpu} tasks of {CPU_SECONDS * 1e3:.0f} ms CPU")
        res["cpu_per_s"] = throughput(system, "cpu", n_cpu)
        log(f"{system}: latency and memory")
        res.update(latency_and_memory(system))
        results[system] = res
        log(f"{system}: {res}")
    floor = 2 / CPU_SECONDS
    base = results.get("offload")
    print(f"\n| system | no-op/s | 20 ms CPU tasks/s (floor {floor:.0f}) | send-to-start p50 / p99 "
          "| worker RSS | idle child RSS |")
    print("|---|---:|---:|---:|---:|---:|")
    for system, r in results.items():
        ratio = ""
        if base and system != "offload":
            ratio = f" (offload {base['noop_per_s'] / r['noop_per_s']:.2f}x)"
        print(f"| {system} | {r['noop_per_s']:,.0f}{ratio} | {r['cpu_per_s']:.1f} "
              f"({r['cpu_per_s'] / floor:.0%} of floor) | {r['p50_ms']:.1f} / {r['p99_ms']:.1f} ms "
              f"| {r['worker_rss_mb']:.0f} MB | {r['child_rss_mb']:.0f} MB x {r['children']} |")
    if opts.json_out:
        Path(opts.json_out).write_text(json.dumps(results, indent=2))
    flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
