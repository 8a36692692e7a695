#!/usr/bin/env python3
"""The benchmark, in one command: offload side by side with its peers, with ratios.

    python bench/run.py [--brokers sqlite,redis,postgres] [--n 20000] [--quick]
                        [--peers huey,celery,...]

Every peer runs from its own virtualenv under ``bench/.venvs/<peer>`` (created on demand
from ``bench/requirements/<peer>.txt``, reused when present), through its script under
``bench/peers/`` (one JSON line per step). offload runs from the project's ``.venv``.
Every step has a timeout; a failing step is reported as ``failed: <reason>`` and the run
goes on. Results: ``docs/benchmarks.md`` (rewritten; its methodology section is kept) and
``docs/benchmarks.png``; raw JSON in ``bench/results/last-run.json.tmp``.
Standard library only (matplotlib runs inside the ``bench`` venv).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
PEERS = BENCH / "peers"
VENVS = BENCH / ".venvs"
REQS = BENCH / "requirements"
DOC = ROOT / "docs" / "benchmarks.md"
PNG = ROOT / "docs" / "benchmarks.png"
RAW = BENCH / "results" / "last-run.json.tmp"

REDIS = "redis://127.0.0.1:6379/15"
POSTGRES = "postgresql://postgres@127.0.0.1:5432/test"

# broker -> [(system key, venv, script, url)]; "offload" runs from the project's venv
SYSTEMS: dict[str, list[tuple[str, str, str, str]]] = {
    "sqlite": [
        ("baseline", "bench", "peers/baseline.py", "sqlite:///{tmp}/raw.db"),
        ("offload", "", "offload_bench.py", "sqlite:///{tmp}/b.db"),
        ("huey", "huey", "peers/peer_huey.py", "sqlite:///{tmp}/huey.db"),
    ],
    "redis": [
        ("baseline", "bench", "peers/baseline.py", REDIS),
        ("offload", "", "offload_bench.py", REDIS + "?prefix=bench"),
        ("celery", "celery", "peers/peer_celery.py", REDIS),
        ("dramatiq", "dramatiq", "peers/peer_dramatiq.py", REDIS),
        ("rq", "rq", "peers/peer_rq.py", REDIS),
        ("arq", "arq", "peers/peer_arq.py", REDIS),
        ("taskiq", "taskiq", "peers/peer_taskiq.py", REDIS),
        ("saq", "saq", "peers/peer_saq.py", REDIS),
        ("huey", "huey", "peers/peer_huey.py", REDIS),
    ],
    "postgres": [
        ("baseline", "bench", "peers/baseline.py", POSTGRES),
        ("offload", "", "offload_bench.py", POSTGRES + "?schema=offload_bench"),
        ("procrastinate", "procrastinate", "peers/peer_procrastinate.py", POSTGRES),
        ("pgqueuer", "pgqueuer", "peers/peer_pgqueuer.py", POSTGRES),
    ],
}
BROKER_TITLE = {"sqlite": "SQLite", "redis": "Redis", "postgres": "PostgreSQL"}
FIGURES = ["enqueue", "bulk", "process", "p50_ms", "p99_ms", "rss_mb"]
HIGHER_BETTER = {"enqueue": True, "bulk": True, "process": True, "p50_ms": False,
                 "p99_ms": False, "rss_mb": False}
DEFAULT_C = 64  # offload's default concurrency (offload.core.policy.DEFAULT_CONCURRENCY)
BODY_ROUNDS = 5  # interleaved rounds of the floor and offload's real-body figures
# The real-body figure (`body` steps): offload's worker with its default settings and tuned
# (-c per handler kind), every peer with its setup above and tuned, and the body alone in a
# bare loop (the floor), all in one run. Keys are result steps.
OFFLOAD_BODY = [("body_sync", ["--flavor", "sync"]),
                ("body_sync_tuned", ["--flavor", "sync", "-c", "128"]),
                ("body_async", []), ("body_async_tuned", ["-c", "256"])]
FLOOR_STEPS = [("sync", ["--flavor", "sync"]), ("async", ["-c", str(DEFAULT_C)]),
               ("async_tuned", ["-c", "256"]),
               ("async_uvloop", ["-c", str(DEFAULT_C), "--loop", "uvloop"])]
# Each of offload's real-body figures against the floor of its kind: in a round each runs
# right after that floor, and its ratio is the median of the rounds' own ratios
FLOOR_OF = {"body_sync": "sync", "body_async": "async", "body_async_tuned": "async_tuned",
            "body_sync_tuned": "sync"}
# offload's worker runs on uvloop when installed (offload.worker.runner): its async default
# is also set beside the body alone on uvloop, run just before that asyncio floor
ALSO_FLOOR = {"body_async": "async_uvloop"}
NOT_PEERS = ("offload", "baseline", "floor")
MARK_START = "<!-- methodology:start (hand-written; kept by bench/run.py) -->"
MARK_END = "<!-- methodology:end -->"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# -- virtualenvs ---------------------------------------------------------------------------


def offload_python() -> str:
    p = ROOT / ".venv" / "bin" / "python"
    return str(p) if p.exists() else sys.executable


def ensure_venv(name: str, timeout: float = 900) -> str:
    """``bench/.venvs/<name>/bin/python``, creating the venv from its pins if missing."""
    py = VENVS / name / "bin" / "python"
    stamp = VENVS / f"{name}.ok"
    req = REQS / f"{name}.txt"
    if py.exists() and stamp.exists() and stamp.read_text() == req.read_text():
        return str(py)
    log(f"creating virtualenv bench/.venvs/{name} from {req.relative_to(ROOT)}")
    VENVS.mkdir(exist_ok=True)
    if not py.exists():
        subprocess.run([sys.executable, "-m", "venv", str(VENVS / name)], check=True,
                       timeout=120)
    r = subprocess.run([str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                        "-r", str(req)], capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0:
        tail = (r.stderr or r.stdout).strip().splitlines()[-1:] or ["?"]
        raise RuntimeError(f"pip install -r {req.name} failed: {tail[0][:200]}")
    stamp.write_text(req.read_text())
    return str(py)


def pins(name: str) -> str:
    try:
        lines = (REQS / f"{name}.txt").read_text().split()
    except OSError:
        return ""
    return ", ".join(x for x in lines if x and not x.startswith("#"))


# -- running steps -------------------------------------------------------------------------


def run_one(py: str, script: str, step: str, url: str, n: int, timeout: float,
            extra: list[str] | None = None) -> dict[str, Any]:
    cmd = [py, str(BENCH / script), step, "--n", str(n), "--url", url,
           "--timeout", str(int(timeout)), *(extra or [])]
    t = time.time()
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout + 90,
                           cwd=str(ROOT))
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout + 90:.0f}s"}
    took = time.time() - t
    for line in reversed(r.stdout.strip().splitlines()):
        if line.startswith("{"):
            try:
                res = json.loads(line)
            except ValueError:
                break
            res["took_s"] = round(took, 1)
            return res
    tail = [x for x in (r.stderr or "").strip().splitlines() if x.strip()][-1:] or ["no output"]
    return {"error": f"exit {r.returncode}: {tail[0][:300]}"}


def _rounds_of(results: dict[str, Any]) -> list[tuple[str, str]]:
    """(figure, its rounds' rates) for the floors and offload's real-body figures."""
    out = []
    for key, label in (("floor", "floor"), ("offload", "offload")):
        for step, r in results.get(key, {}).get("steps", {}).items():
            if isinstance(r, dict) and r.get("rounds"):
                rates = "/".join("failed" if x is None else f"{x:,}" for x in r["rounds"])
                out.append((f"{label} {step}", rates))
    return out


def median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run of median rate, with every run's rate in ``rounds`` (None: failed). A failed
    run counts as the slowest, so a figure fails when most of its runs did."""
    ranked = sorted(runs, key=lambda r: -1.0 if "error" in r else r["rate"])
    mid = dict(ranked[len(ranked) // 2])
    mid["rounds"] = [None if "error" in r else round(r["rate"]) for r in runs]
    return mid


def paired_ratio(runs: list[dict[str, Any]], floors: list[dict[str, Any]]) -> dict[str, Any]:
    """The median of a figure's per-round ratios to the floor run just before it in the
    same round (``ratio``), and every round's (``ratios``): a ratio of two runs seconds
    apart, where the ratio of two medians could pair a fast moment with a slow one."""
    ratios = [r["rate"] / f["rate"] for r, f in zip(runs, floors, strict=True)
              if "error" not in r and "error" not in f and f.get("rate")]
    if not ratios:
        return {}
    return {"ratio": statistics.median(ratios), "ratios": [round(x, 2) for x in ratios]}


def run_broker(broker: str, args: argparse.Namespace, tmp: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    n = args.n
    lat_n = args.latency_samples
    for key, venv, script, url in SYSTEMS[broker]:
        if args.peers and key not in args.peers and key not in ("offload", "baseline"):
            continue
        if args.body_only and key == "baseline":
            continue
        url = url.format(tmp=tmp)
        res: dict[str, Any] = {"steps": {}}
        out[key] = res
        try:
            py = offload_python() if key == "offload" else ensure_venv(venv)
        except Exception as exc:
            res["error"] = f"virtualenv: {exc}"
            log(f"{broker}/{key}: failed: {res['error']}")
            continue
        steps = ["enqueue"] if key == "baseline" else ["enqueue", "bulk", "process", "latency"]
        if args.body_only:
            steps = []
        if key == "offload" and broker not in args.offload_brokers:
            res["error"] = "not measured: broker not available"
            continue
        if key == "offload" and args.body:
            # The floor in the same run (the body alone, from offload's venv), and offload's
            # own real-body figures, in BODY_ROUNDS interleaved rounds, each figure the
            # median of its rounds: one figure takes about a second, and this VM's speed
            # moves by a third within seconds now and then, which one round cannot tell
            # from a change in offload.
            floor: dict[str, Any] = {"name": "the body alone, bare loop", "steps": {}}
            out["floor"] = floor
            rounds: dict[str, list[dict[str, Any]]] = {}
            floors = dict(FLOOR_STEPS)
            for _ in range(BODY_ROUNDS):
                for name, extra in OFFLOAD_BODY:
                    fname = FLOOR_OF[name]
                    if name in ALSO_FLOOR:
                        rounds.setdefault(f"floor {ALSO_FLOOR[name]}", []).append(
                            run_one(py, script, "floor", url, args.body_n,
                                    args.process_timeout, floors[ALSO_FLOOR[name]]))
                    if name != "body_sync_tuned":  # it pairs with the sync floor just run
                        rounds.setdefault(f"floor {fname}", []).append(
                            run_one(py, script, "floor", url, args.body_n,
                                    args.process_timeout, floors[fname]))
                    rounds.setdefault(name, []).append(
                        run_one(py, script, "body", url, args.body_n, args.process_timeout,
                                extra))
            for name, runs in rounds.items():
                r = median_run(runs)
                if name.startswith("floor "):
                    floor["steps"][name.removeprefix("floor ")] = r
                    log(f"{broker}/floor {name.removeprefix('floor ')}: {summary(r)}")
                else:
                    r.update(paired_ratio(runs, rounds[f"floor {FLOOR_OF[name]}"]))
                    if name in ALSO_FLOOR:
                        also = paired_ratio(runs, rounds[f"floor {ALSO_FLOOR[name]}"])
                        if also:
                            r["ratio_also"], r["ratios_also"] = also["ratio"], also["ratios"]
                    res["steps"][name] = r
                    res.setdefault("name", r.get("system", key))
                    log(f"{broker}/{key} {name}: {summary(r)} ({r.get('ratio', 0):.2f}x)")
        for step in steps:
            if step == "latency":
                r = run_one(py, script, step, url, lat_n, 60)
            elif step == "process":
                r = run_one(py, script, step, url, n, args.process_timeout)
            else:
                r = run_one(py, script, step, url, n, args.process_timeout)
            if "error" in r and not r["error"].startswith("no bulk"):
                log(f"{broker}/{key} {step}: failed ({r['error'][:120]}); retrying once")
                first = r["error"]
                r = run_one(py, script, step, url, lat_n if step == "latency" else n,
                            60 if step == "latency" else args.process_timeout)
                r["retried_after"] = first[:300]
            res["steps"][step] = r
            res.setdefault("name", r.get("system", key))
            log(f"{broker}/{key} {step}: {summary(r)}")
        if args.body and key not in ("baseline", "offload"):  # offload's: with the floor
            body = [("body", []),
                                                          ("body_tuned", ["--flavor", "tuned"])]
            for name, extra in body:
                r = run_one(py, script, "body", url, args.body_n, args.process_timeout, extra)
                if "error" in r and "no concurrency setting" not in r["error"]:
                    log(f"{broker}/{key} {name}: failed ({r['error'][:120]}); retrying once")
                    first = r["error"]
                    r = run_one(py, script, "body", url, args.body_n, args.process_timeout,
                                extra)
                    r["retried_after"] = first[:300]
                res["steps"][name] = r
                res.setdefault("name", r.get("system", key))
                log(f"{broker}/{key} {name}: {summary(r)}")
        if key == "offload" and not args.body_only:
            for backlog in args.backlogs:
                r = run_one(py, script, "backlog", url, n, args.process_timeout + 300,
                            ["--backlog", str(backlog),
                             "--backlog-budget", str(args.backlog_budget)])
                res["steps"][f"backlog_{backlog}"] = r
                log(f"{broker}/{key} backlog {backlog}: {summary(r)}")
            if args.profile:
                res["profile"] = profile_offload(py, url, n, tmp, broker)
                if args.body:
                    res["profile_body"] = profile_offload(py, url, args.body_n, tmp, broker,
                                                          body=True)
    return out


def summary(r: dict[str, Any]) -> str:
    if "error" in r:
        return "failed: " + r["error"][:160]
    if "p50_ms" in r:
        return (f"p50 {r['p50_ms']:.2f} ms, p99 {r['p99_ms']:.2f} ms, "
                f"idle RSS {r['rss_mb']:.1f} MB")
    s = f"{r.get('rate', float('nan')):,.0f}/s"
    if "queued" in r:
        s += f" ({r['queued']:,} queued, prefill {r.get('prefill_s')}s)"
    return s


def profile_offload(py: str, url: str, n: int, tmp: str, broker: str,
                    body: bool = False) -> str:
    """py-spy top functions of the offload worker during a processed/s run (best effort).
    ``body``: plain ``def`` tasks doing one Redis INCR at the default concurrency, sampled
    only while a thread holds the GIL (where the CPU of the one Python core goes)."""
    spy = VENVS / "bench" / "bin" / "py-spy"
    if not spy.exists():
        return "py-spy not installed in bench/.venvs/bench"
    url = url.replace("b.db", "prof.db")
    env = dict(os.environ, BENCH_PYSPY=str(spy))
    extra: list[str] = []
    if body:
        env.update(BENCH_BODY="incr", BENCH_PYSPY_ARGS="--gil")
        extra = ["--flavor", "sync", "-c", "32"]
    r = subprocess.run([py, str(BENCH / "offload_bench.py"), "profile", "--n", str(n),
                        "--url", url, "--timeout", "120", *extra], capture_output=True,
                       text=True, timeout=300, cwd=str(ROOT), env=env)
    for line in reversed(r.stdout.strip().splitlines()):
        if line.startswith("{"):
            return json.loads(line).get("profile", "")
    return f"profile failed: {(r.stderr or '').strip()[-300:]}"


# -- report --------------------------------------------------------------------------------


def fig(res: dict[str, Any], figure: str) -> float | None:
    step = {"p50_ms": "latency", "p99_ms": "latency", "rss_mb": "latency"}.get(figure, figure)
    r = res.get("steps", {}).get(step)
    if not r or "error" in r:
        return None
    v = r.get(figure if step == "latency" else "rate")
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)


def cell(res: dict[str, Any], figure: str) -> str:
    if "error" in res:
        return "—"
    step = {"p50_ms": "latency", "p99_ms": "latency", "rss_mb": "latency"}.get(figure, figure)
    r = res.get("steps", {}).get(step)
    if r is None:
        return "—"
    if "error" in r:
        e = r["error"]
        return "n/a" if e.startswith("no bulk") else "failed"
    v = fig(res, figure)
    if v is None:
        return "—"
    if figure in ("p50_ms", "p99_ms"):
        return f"{v:.2f}"
    if figure == "rss_mb":
        return f"{v:.1f}"
    return f"{v:,.0f}"


def best_peer(results: dict[str, Any], figure: str) -> tuple[str, float] | None:
    best = None
    for key, res in results.items():
        if key in NOT_PEERS or "error" in res:
            continue
        v = fig(res, figure)
        if v is None:
            continue
        if best is None or (v > best[1] if HIGHER_BETTER[figure] else v < best[1]):
            best = (res.get("name", key), v)
    return best


def ratio_text(off: float | None, best: tuple[str, float] | None, figure: str) -> str:
    if off is None or best is None or best[1] == 0:
        return "—"
    r = off / best[1]
    return f"{r:.2f}x"


def targets(broker: str, results: dict[str, Any]) -> list[tuple[str, str, bool | None]]:
    """(target, measured, met?) per target of issues #2 / #3."""
    off = results.get("offload", {})
    o = {f: fig(off, f) for f in FIGURES}
    base = fig(results.get("baseline", {}), "enqueue")
    out: list[tuple[str, str, bool | None]] = []

    def vs(label: str, figure: str, peer: tuple[str, float] | None, factor: float) -> None:
        if o[figure] is None or peer is None:
            out.append((label, "not measured", None))
            return
        r = o[figure] / peer[1]
        out.append((label, f"{o[figure]:,.0f}/s = {r:.2f}x {peer[0]} ({peer[1]:,.0f}/s)",
                    r >= factor))

    def peer_named(name: str, figure: str) -> tuple[str, float] | None:
        for key, res in results.items():
            if key == name and "error" not in res:
                v = fig(res, figure)
                if v is not None:
                    return (res.get("name", key), v)
        return None

    if broker == "sqlite":
        vs("enqueue/s >= 3x huey", "enqueue", peer_named("huey", "enqueue"), 3)
        vs("processed/s >= 3x huey", "process", peer_named("huey", "process"), 3)
        if o["process"] is not None:
            out.append(("processed/s >= 10,000 (one worker process)",
                        f"{o['process']:,.0f}/s", o["process"] >= 10000))
        h = results.get("huey", {})
        for f in ("p50_ms", "p99_ms"):
            hv = fig(h, f)
            if o[f] is None or hv is None:
                out.append((f"latency {f[:3]} lower than huey", "not measured", None))
            else:
                out.append((f"latency {f[:3]} lower than huey",
                            f"{o[f]:.2f} ms vs {hv:.2f} ms", o[f] < hv))
    if broker == "redis":
        vs("processed/s >= 3x best peer", "process", best_peer(results, "process"), 3)
        vs("bulk enqueue/s >= 3x best peer", "bulk", best_peer(results, "bulk"), 3)
        if o["enqueue"] is not None and base:
            out.append(("one-by-one enqueue/s >= 0.8x plain LPUSH",
                        f"{o['enqueue']:,.0f}/s = {o['enqueue'] / base:.2f}x LPUSH "
                        f"({base:,.0f}/s)", o["enqueue"] >= 0.8 * base))
        if o["p50_ms"] is not None:
            out.append(("latency p50 <= 0.5 ms", f"{o['p50_ms']:.2f} ms", o["p50_ms"] <= 0.5))
            out.append(("latency p99 <= 1 ms", f"{o['p99_ms']:.2f} ms", o["p99_ms"] <= 1.0))
        if o["rss_mb"] is not None:
            out.append(("idle worker RSS <= 30 MB", f"{o['rss_mb']:.1f} MB",
                        o["rss_mb"] <= 30))
    if broker == "postgres":
        vs("processed/s >= 3x pgqueuer", "process", peer_named("pgqueuer", "process"), 3)
        vs("bulk enqueue/s >= 1.5x pgqueuer", "bulk", peer_named("pgqueuer", "bulk"), 1.5)
        if o["enqueue"] is not None and base:
            out.append(("one-by-one enqueue/s >= 0.8x plain INSERT commits",
                        f"{o['enqueue']:,.0f}/s = {o['enqueue'] / base:.2f}x INSERT "
                        f"({base:,.0f}/s)", o["enqueue"] >= 0.8 * base))
    bl = sorted((int(k.split("_")[1]), v) for k, v in off.get("steps", {}).items()
                if k.startswith("backlog_") and "error" not in v)
    proc = off.get("steps", {}).get("process", {})
    if bl and proc.get("rate") and "error" not in proc:
        # Compare equal amounts of work: N tasks measured with N queued (the processed/s
        # column) against the first N of 1,000,000 queued. The 1,000-queued figure is
        # shown too, but a run of 1,000 tasks is too short to compare with N of them.
        hi = bl[-1][1]
        r = hi["rate"] / proc["rate"]
        out.append((f"processed/s does not drop with backlog ({proc.get('n', 0):,} vs "
                    f"{hi['queued']:,} queued, {hi.get('measured', 0):,} measured in both)",
                    f"{proc['rate']:,.0f}/s vs {hi['rate']:,.0f}/s ({r:.2f}x)", r >= 0.8))
    return out


def rate_of(res: dict[str, Any], step: str) -> float | None:
    r = res.get("steps", {}).get(step)
    if not r or "error" in r or not r.get("rate") or r["rate"] != r["rate"]:
        return None
    return float(r["rate"])


def local(text: str) -> str:
    """An error text without this machine's paths (the report is published)."""
    text = text.replace(str(ROOT) + "/", "")
    return re.sub(r"/\S*/(site-packages|lib/python[\d.]+)/", r"\1/", text)


def body_table(broker: str, results: dict[str, Any]) -> list[str]:
    """The real-body table: processed/s of tasks doing one Redis INCR, each against the
    floor of its own kind (sync: a plain loop; async: a bare asyncio loop with the same
    number in flight), and the targets of the issue: offload at default settings >= 0.8x
    its floor, sync and async."""
    floor = results.get("floor", {})
    if not floor.get("steps"):
        return []
    fl = {k: rate_of(floor, k) for k in ("sync", "async", "async_tuned", "async_uvloop")}

    def against(v: float | None, f: float | None, ratio: float | None = None) -> str:
        if ratio is not None:
            return f"{ratio:.2f}x"
        return f"{v / f:.2f}x" if v is not None and f else "—"

    def conc(res: dict[str, Any], step: str) -> int | None:
        r = res.get("steps", {}).get(step, {})
        m = re.search(r"-c (\d+)|concurrency (\d+)|max_jobs=(\d+)|--max-async-tasks (\d+)",
                      r.get("note", ""))
        return int(next(g for g in m.groups() if g)) if m else None

    L = ["Real body: every task does one Redis `INCR` (redis-py; sync where the system runs "
         "sync code, `redis.asyncio` where it runs async code), one worker process:", "",
         "| system | kind | processed/s | ÷ floor of its kind | setup |",
         "|---|---|---:|---:|---|"]
    rows: list[tuple[str, str, str, float | None, float | None, str, float | None]] = []
    off = results.get("offload", {})
    uv = off.get("steps", {}).get("body_async", {})
    for step, label in (("body_sync", "default settings"), ("body_async", "default settings"),
                        ("body_sync_tuned", "tuned"), ("body_async_tuned", "tuned")):
        sync = step.startswith("body_sync")
        f = fl["sync"] if sync else (fl["async_tuned"] if "tuned" in step else fl["async"])
        r = off.get("steps", {}).get(step)
        if r is None:
            continue
        rows.append((f"**offload**, {label}", "`def`" if sync else "`async def`",
                     "failed" if "error" in r else f"{r['rate']:,.0f}",
                     rate_of(off, step), f, r.get("note", "failed: see below"), r.get("ratio")))
    for key, res in results.items():
        if key in NOT_PEERS or "error" in res:
            continue
        for step, label in (("body", ""), ("body_tuned", ", tuned")):
            r = res.get("steps", {}).get(step)
            if r is None or ("error" in r and "no concurrency setting" in r["error"]):
                continue
            sync = r.get("kind", "") == "sync" or key in ("celery", "dramatiq", "rq", "huey")
            c = conc(res, step)
            f = fl["sync"] if sync else (fl["async_tuned"] if c and c > DEFAULT_C else fl["async"])
            rows.append((res.get("name", key) + label, "sync" if sync else "async",
                         "failed" if "error" in r else f"{r['rate']:,.0f}",
                         rate_of(res, step), f, r.get("note", "failed: see below"), None))
    for name, label, cellv, v, f, note, ratio in rows:
        L.append(f"| {name} | {label} | {cellv} | {against(v, f, ratio)} | {note} |")
    notes = {"sync": "one thread, one INCR after another",
             "async": f"asyncio, {DEFAULT_C} in flight",
             "async_tuned": "asyncio, 256 in flight",
             "async_uvloop": f"uvloop, {DEFAULT_C} in flight (not a floor of the targets)"}
    for k in ("sync", "async", "async_tuned", "async_uvloop"):
        v = fl[k]
        if v is None and k == "async_uvloop":
            continue
        L.append(f"| *the body alone, bare loop* | {k.split('_')[0]} | "
                 f"{'—' if v is None else f'{v:,.0f}'} | 1.00x | {notes[k]} |")
    L.append("")
    L.append(f"The floor of an async figure is the bare asyncio loop with {DEFAULT_C} in flight "
             f"for systems at <= {DEFAULT_C} (offload's default), with 256 for those above. "
             f"offload's figures and the floors are medians of {BODY_ROUNDS} interleaved rounds; "
             "in a round each of offload's figures runs right after the floor of its kind "
             "(one figure takes about a second), and offload's ÷ floor is the median of the "
             "rounds' own ratios. Every peer's figure is one run of a few seconds or more, "
             "against the median floor.")
    if uv.get("ratio_also") is not None:
        L.append("")
        L.append("offload's worker runs on uvloop when it is installed (its redis and postgres "
                 "extras include it), so its default `async def` figure is also set against the "
                 f"body alone on uvloop, run in each round just before the asyncio floor: "
                 f"**{uv['ratio_also']:.2f}x** (median of the rounds' ratios). The targets "
                 "below are against the standard library's loop, as the issue sets them.")
    spread = [f"{k.replace('_', ' ')} {fl_runs}" for k, fl_runs in _rounds_of(results)]
    spread += [f"offload {k.replace('_', ' ')} ÷ floor {'/'.join(f'{x:.2f}' for x in r['ratios'])}"
               for k, r in off.get("steps", {}).items() if r.get("ratios")]
    if uv.get("ratios_also"):
        spread.append("offload body async ÷ uvloop floor "
                      + "/".join(f"{x:.2f}" for x in uv["ratios_also"]))
    if spread:
        L.append("")
        L.append("Every round, processed/s: " + "; ".join(spread) + ".")
    L.append("")
    L.append("Targets:")
    L.append("")
    for step, kind, f in (("body_sync", "`def`", fl["sync"]),
                          ("body_async", "`async def`", fl["async"])):
        v = rate_of(off, step)
        if v is None or not f:
            L.append(f"- offload at default settings, {kind}: >= 0.8x its floor — not measured")
            continue
        ratio = off.get("steps", {}).get(step, {}).get("ratio", v / f)
        mark = "met" if ratio >= 0.8 else "**missed**"
        L.append(f"- offload at default settings, {kind}: >= 0.8x its floor: {v:,.0f}/s, "
                 f"{ratio:.2f}x (median floor {f:,.0f}/s) — {mark}")
    L.append("")
    return L


def broker_table(broker: str, results: dict[str, Any], args: argparse.Namespace) -> list[str]:
    L = [f"### {BROKER_TITLE[broker]}", ""]
    L += body_table(broker, results)
    if all(not r.get("steps", {}).get("process") for r in results.values()):
        return L  # --body-only
    L.append("Framework overhead: no-op tasks.")
    L.append("")
    L.append("| system | enqueue/s (one by one) | bulk enqueue/s | processed/s (1 worker "
             "process) | latency p50 (ms) | latency p99 (ms) | idle worker RSS (MB) | setup |")
    L.append("|---|---:|---:|---:|---:|---:|---:|---|")
    order = ["offload"] + [k for k in results if k not in NOT_PEERS]
    for key in order:
        res = results.get(key)
        if res is None:
            continue
        name = res.get("name", key)
        if key == "offload":
            name = "**offload**"
        if "error" in res:
            L.append(f"| {name} | {res['error']} | | | | | | |")
            continue
        notes = []
        for s in ("process", "bulk"):
            r = res["steps"].get(s, {})
            if r.get("note") and r["note"] not in notes:
                notes.append(r["note"])
        L.append(f"| {name} | " + " | ".join(cell(res, f) for f in FIGURES) +
                 f" | {'; '.join(notes)} |")
    if "baseline" in results:
        b = results["baseline"]
        L.append(f"| *{b.get('name', 'baseline')} (raw baseline)* | {cell(b, 'enqueue')} "
                 "| | | | | | one client, one round trip per row |")
    off = results.get("offload", {})
    ratios = []
    for f in FIGURES:
        bp = best_peer(results, f)
        ratios.append(ratio_text(fig(off, f), bp, f) + (f" ({bp[0]})" if bp else ""))
    L.append("| *offload ÷ best peer* | " + " | ".join(ratios) + " | higher is better for "
             "rates, lower for latency and RSS |")
    L.append("")
    fails = []
    for key, res in results.items():
        if "error" in res:
            fails.append(f"{res.get('name', key)}: {res['error']}")
            continue
        for s, r in res.get("steps", {}).items():
            if "error" in r and "no concurrency setting" in r["error"]:
                continue
            if "error" in r and not r["error"].startswith("no bulk"):
                fails.append(f"{res.get('name', key)} {s}: failed: {local(r['error'])}")
            elif "retried_after" in r:
                fails.append(f"{res.get('name', key)} {s}: first attempt failed "
                             f"({r['retried_after'][:200]}); the figure is from the retry")
    bl = [(k, v) for k, v in off.get("steps", {}).items() if k.startswith("backlog_")]
    if bl:
        parts = []
        for k, v in sorted(bl, key=lambda kv: int(kv[0].split("_")[1])):
            want = int(k.split("_")[1])
            if "error" in v:
                parts.append(f"{want:,} queued: failed ({v['error'][:120]})")
                continue
            extra = ""
            if v["queued"] != want:
                extra = (f" (1,000,000 would take too long to prefill on this broker: "
                         f"{v['queued']:,} used)")
            how = (f"median of {len(v['runs'])} runs" if v.get("runs") else
                   f"over the first {v['measured']:,} tasks")
            parts.append(f"{v['queued']:,} queued{extra}: **{v['rate']:,.0f}/s** ({how}; "
                         f"prefill {v['prefill_s']} s)")
        pv = fig(off, "process")
        if pv is not None:
            parts.insert(1, f"{args.n:,} queued: {pv:,.0f}/s (the processed/s column)")
        L.append("offload processed/s with a backlog: " + "; ".join(parts) + ".")
        L.append("")
    tg = targets(broker, results)
    if tg:
        L.append("Targets:")
        L.append("")
        for label, measured, ok in tg:
            mark = "not measured" if ok is None else ("met" if ok else "**missed**")
            L.append(f"- {label}: {measured} — {mark}")
        L.append("")
    if fails:
        L.append("Failed or not measured:")
        L.append("")
        L.extend(f"- {x}" for x in fails)
        L.append("")
    return L


DEFAULT_METHOD = f"""{MARK_START}
## Method

- **Workload**: no-op tasks taking one float argument. Every system runs the same task body
  (`bench/peers/_common.py`, `REC.hit`): it notes the wall clock when it starts, counts, and
  when the expected number of tasks has run writes the record to a file.
- **enqueue/s (one by one)**: one producer process, one thread, the system's ordinary send
  call in a loop (`task.send(...)` for offload, `.delay()`, `.send()`, `enqueue()`,
  `enqueue_job()`, `.kiq()`, `defer()` ...), each call returning once the broker has the
  task. The first send (connection set-up) is outside the timing.
- **bulk enqueue/s**: the system's own batch API in chunks of 1,000 (offload `send_many`,
  RQ `enqueue_many`, procrastinate `batch_defer`, pgqueuer list `enqueue`); "n/a" where the
  system has none.
- **processed/s (1 worker process)**: N tasks are queued first, then one worker process is
  started. The rate is measured by the tasks themselves: (count - 1) / (end of the last task
  - start of the first), so worker start-up and shutdown are excluded. The worker is
  started with each system's fastest documented setup for no-op tasks (column "setup").
- **latency p50/p99**: a worker is started and warmed up with one task; after it has been
  idle 3 s its RSS is read; then the producer sends 1,000 tasks at a steady 100 tasks/s,
  stamping `time.time()` in the arguments; each task records `time.time() - sent` at its
  start (same host, same clock).
- **idle worker RSS**: `VmRSS` from `/proc/<pid>/status` of the worker process, summed over
  its child processes when the system's CLI forks (Dramatiq, taskiq: supervisor + worker).
- **backlog**: for offload, processed/s with 1,000 vs 1,000,000 tasks already queued
  (bulk-prefilled, then one worker started). With 1,000 the whole queue is measured (a few
  tens of ms, so the median of 5 runs is shown); with 1,000,000 the first N tasks, while
  the rest are still queued. The target compares equal work: N tasks with N queued (the
  processed/s column) against the first N of 1,000,000 queued. If prefilling 1,000,000 is
  projected to take too long on a broker, 200,000 are used and the table says so.
- **Raw baselines** in the same run: redis-py `LPUSH` one by one, single-row `INSERT` +
  commit on PostgreSQL, sqlite3 `INSERT` + `COMMIT` in WAL mode with synchronous=NORMAL (the
  durability of offload's and huey's SQLite defaults).
- Each peer is installed from PyPI into its own virtualenv (`bench/.venvs/<peer>`, pins in
  `bench/requirements/`). Redis: database 15, `FLUSHDB` between steps. PostgreSQL: one
  schema per system, dropped after each step. Loopback only.
- Caveat: a 2-core machine; producer, worker and server share it, and other processes on
  the machine add noise. Compare figures within one run, not across runs.
{MARK_END}"""


def methodology() -> str:
    try:
        text = DOC.read_text()
    except OSError:
        return DEFAULT_METHOD
    i, j = text.find(MARK_START), text.find(MARK_END)
    if i < 0 or j < 0:
        return DEFAULT_METHOD
    return text[i:j + len(MARK_END)]


def versions() -> str:
    out = []
    try:
        r = subprocess.run(["redis-cli", "-n", "15", "INFO", "server"], capture_output=True,
                           text=True, timeout=5)
        m = re.search(r"redis_version:(\S+)", r.stdout)
        if m:
            out.append(f"Redis {m.group(1)}")
    except Exception:
        pass
    try:
        r = subprocess.run(["psql", "-h", "127.0.0.1", "-U", "postgres", "-d", "test", "-tAc",
                            "SHOW server_version"], capture_output=True, text=True, timeout=5)
        if r.stdout.strip():
            out.append(f"PostgreSQL {r.stdout.strip().split()[0]}")
    except Exception:
        pass
    return ", ".join(out)


def splice_body(all_res: dict[str, Any], args: argparse.Namespace, cmd: str) -> bool:
    """``--body-only``: put this run's real-body tables in place of the full run's in
    docs/benchmarks.md (its no-op tables stay, with their own date), and say so in the
    header. False when the document has no table to replace (then it is written anew)."""
    if not DOC.exists():
        return False
    text = DOC.read_text()
    for broker in args.brokers:
        if broker not in all_res:
            continue
        head = f"### {BROKER_TITLE[broker]}\n\n"
        start = text.find(head)
        end = text.find("Framework overhead: no-op tasks.", start)
        nxt = text.find("\n### ", start + len(head))
        if start < 0 or end < 0 or (0 <= nxt < end):
            return False
        new = "\n".join(body_table(broker, all_res[broker])) + "\n"
        text = text[: start + len(head)] + new + text[end:]
    note = (f"- Real-body tables: `{cmd}` on "
            f"{getattr(args, 'date', None) or time.strftime('%Y-%m-%d %H:%M %Z')}, load "
            f"average at start {args.load_start} (the no-op tables and the profiles are "
            "the full run's)")
    lines = [x for x in text.split("\n") if not x.startswith("- Real-body tables: ")]
    at = next((i for i, x in enumerate(lines) if x.startswith("- N = ")), 6)
    lines.insert(at + 1, note)
    DOC.write_text("\n".join(lines))
    return True


def write_report(all_res: dict[str, Any], args: argparse.Namespace, took: float,
                 cmd: str, chart_ok: bool) -> None:
    if getattr(args, "body_only", False) and splice_body(all_res, args, cmd):
        return
    L = ["# Benchmarks", "",
         "Generated by `bench/run.py` (do not edit the tables by hand; the method section is "
         "kept between runs).", "",
         f"- Command: `{cmd}`",
         f"- Date: {getattr(args, 'date', None) or time.strftime('%Y-%m-%d %H:%M %Z')}; "
         f"took {took / 60:.1f} min",
         f"- Machine: {os.cpu_count()} cores, {platform.platform()}, Python "
         f"{platform.python_version()}; {versions()}; load average at start "
         f"{args.load_start}",
         f"- N = {args.n:,} tasks per throughput figure"
         + (f" ({args.body_n:,} per real-body figure)" if getattr(args, "body_n", None)
            else "")
         + f"; {args.latency_samples:,} latency samples at 100 tasks/s", ""]
    if chart_ok:
        L += ["![processed/s and enqueue/s per system](benchmarks.png)", ""]
    L += ["## Results", ""]
    for broker in args.brokers:
        if broker in all_res:
            L += broker_table(broker, all_res[broker], args)
    profs = [(b, k, all_res[b].get("offload", {}).get(k)) for b in args.brokers
             if b in all_res for k in ("profile_body", "profile")]
    profs = [(b, k, p) for b, k, p in profs if p]
    if profs:
        L += ["## Where the offload worker spends its time", ""]
        for b, k, p in profs:
            what = ("plain `def` tasks doing one Redis INCR, default concurrency, samples "
                    "taken while a thread holds the GIL" if k == "profile_body"
                    else "no-op tasks")
            L += [f"<details><summary>{BROKER_TITLE[b]}: {what}</summary>", "", "```", p,
                  "```", "", "</details>", ""]
    L += ["## Versions", ""]
    for name in ["huey", "celery", "dramatiq", "rq", "arq", "taskiq", "saq", "procrastinate",
                 "pgqueuer", "bench"]:
        if (REQS / f"{name}.txt").exists():
            L.append(f"- {name}: {pins(name)}")
    L += ["", methodology(), ""]
    DOC.parent.mkdir(exist_ok=True)
    DOC.write_text("\n".join(L))


CHART = r'''
import json, sys
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.patches import Patch
from matplotlib.ticker import FuncFormatter, NullFormatter
data = json.load(open(sys.argv[1]))
brokers = [b for b in data["brokers"] if b in data["results"]]
fig, axes = plt.subplots(len(brokers), 2, figsize=(13, 3.0 * len(brokers) + 0.8),
                         squeeze=False)
titles = {"sqlite": "SQLite", "redis": "Redis", "postgres": "PostgreSQL"}
fmt = FuncFormatter(lambda v, _: f"{v:,.0f}")
for row, b in enumerate(brokers):
    res = data["results"][b]
    keys = [k for k in res if k not in ("baseline", "floor") and "error" not in res[k]
            and "process" in res[k]["steps"]]
    keys = (["offload"] if "offload" in keys else []) + [k for k in keys if k != "offload"]
    names = [res[k].get("name", k) for k in keys]
    def val(k, step):
        r = res[k]["steps"].get(step, {})
        return r.get("rate") if "error" not in r else None
    for col, (steps, title) in enumerate([(("process",), "processed/s, one worker process"),
                                          (("enqueue", "bulk"), "enqueue/s")]):
        ax = axes[row][col]
        h = 0.8 / len(steps)
        top = 1
        for i, step in enumerate(steps):
            ys = [j + i * h for j in range(len(keys))]
            vs = [val(k, step) or 0 for k in keys]
            top = max([top] + vs)
            colors = [("#d62728" if i == 0 else "#ff9896") if k == "offload"
                      else ("#1f77b4" if i == 0 else "#aec7e8") for k in keys]
            ax.barh(ys, vs, height=h, color=colors)
            for y, v in zip(ys, vs):
                if v:
                    ax.text(v, y, f" {v:,.0f}", va="center", fontsize=7)
        ax.set_yticks([j + h * (len(steps) - 1) / 2 for j in range(len(keys))])
        ax.set_yticklabels(names, fontsize=8)
        ax.invert_yaxis()
        ax.set_xscale("log")
        ax.set_xlim(100, top * 4)
        ax.xaxis.set_major_formatter(fmt)
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.tick_params(axis="x", labelsize=7)
        ax.set_title(f"{titles[b]}: {title}", fontsize=9, pad=11)
        if len(steps) > 1:
            has_base = "baseline" in res and "error" not in res["baseline"]
            bv = val("baseline", "enqueue") if has_base else None
            if bv:
                ax.axvline(bv, color="gray", ls="--", lw=1)
                ax.text(bv, 1.01, f"raw baseline {bv:,.0f}/s", fontsize=6, color="gray",
                        ha="center", transform=ax.get_xaxis_transform())
            if row == 0:
                handles = [Patch(color="#d62728", label="offload, one by one"),
                           Patch(color="#ff9896", label="offload, bulk"),
                           Patch(color="#1f77b4", label="peer, one by one"),
                           Patch(color="#aec7e8", label="peer, bulk"),
                           plt.Line2D([], [], color="gray", ls="--",
                                      label="raw one-by-one baseline")]
                ax.legend(handles=handles, fontsize=6, loc="lower right")
fig.suptitle("offload vs peers, no-op tasks (log scale; higher is better)", fontsize=11)
fig.tight_layout()
fig.savefig(sys.argv[2], dpi=110)
'''


def make_chart(raw: Path) -> bool:
    try:
        py = ensure_venv("bench")
        subprocess.run([py, "-c", CHART, str(raw), str(PNG)], check=True, timeout=120,
                       capture_output=True, text=True)
        return True
    except Exception as exc:
        err = getattr(exc, "stderr", "") or str(exc)
        log(f"chart failed: {err.strip()[-300:]}")
        return False


def available_offload_brokers() -> list[str]:
    brokers = ROOT / "src" / "offload" / "brokers"
    have = {p.parent.name for p in brokers.glob("*/__init__.py")}
    return [b for b in ("sqlite", "redis", "postgres") if b in have]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--brokers", default="sqlite,redis,postgres")
    ap.add_argument("--n", type=int, default=None, help="tasks per figure (20,000)")
    ap.add_argument("--quick", action="store_true",
                    help="N=2,000, 300 latency samples, 1,000 vs 100,000 backlog (< 5 min)")
    ap.add_argument("--peers", default="", help="comma-separated subset, e.g. huey,celery")
    ap.add_argument("--no-profile", action="store_true",
                    help="skip the py-spy profile of the offload worker")
    ap.add_argument("--no-body", action="store_true",
                    help="skip the real-body figure (tasks doing one Redis INCR)")
    ap.add_argument("--body-only", action="store_true",
                    help="only the real-body figure and its floor (a quick A/B); its "
                         "tables replace those in docs/benchmarks.md, the rest stays")
    ap.add_argument("--report-only", action="store_true",
                    help="rewrite docs/benchmarks.md and the chart from the last raw results")
    args = ap.parse_args()
    args.brokers = [b.strip() for b in args.brokers.split(",") if b.strip()]
    for b in args.brokers:
        if b not in SYSTEMS:
            ap.error(f"--brokers: unknown broker {b!r} (sqlite, redis, postgres)")
    args.peers = [p.strip() for p in args.peers.split(",") if p.strip()]
    known = {k for v in SYSTEMS.values() for k, *_ in v}
    for p in args.peers:
        if p not in known:
            ap.error(f"--peers: unknown peer {p!r} ({', '.join(sorted(known))})")
    if args.n is None:
        args.n = 2000 if args.quick else 20000
    args.latency_samples = 300 if args.quick else 1000
    args.backlogs = [1000, 100_000] if args.quick else [1000, 1_000_000]
    args.backlog_budget = 60.0 if args.quick else 150.0
    args.process_timeout = 60 if args.quick else 240
    args.profile = not args.no_profile and not args.quick and not args.body_only
    args.body = not args.no_body
    args.body_n = max(2000, args.n // 2)  # slow peers run a body task at ~200/s
    args.offload_brokers = available_offload_brokers()
    args.load_start = " ".join(f"{x:.2f}" for x in os.getloadavg())
    cmd = "python bench/run.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    if args.report_only:
        data = json.loads(RAW.read_text())
        meta = data.get("meta", {})
        for k, v in meta.items():
            if k not in ("took", "cmd"):
                setattr(args, k, v)
        write_report(data["results"], args, meta.get("took", 0.0), meta.get("cmd", cmd),
                     make_chart(RAW))
        log(f"rewrote {DOC.relative_to(ROOT)} from {RAW.relative_to(ROOT)}")
        return
    # Peers run from wheels that pip byte-compiled when it installed them; offload runs from
    # this checkout, which may never have been (PYTHONDONTWRITEBYTECODE, a fresh clone).
    # Compile it the same way, so no worker pays for compiling at start-up, in time or RSS.
    subprocess.run([offload_python(), "-m", "compileall", "-q", str(ROOT / "src"),
                    str(BENCH)], check=False)
    tmp = str(Path(os.environ.get("TMPDIR", "/tmp")) / f"offload-bench-{os.getpid()}")
    os.makedirs(tmp, exist_ok=True)
    t0 = time.time()
    log(f"{cmd.strip()}: brokers {', '.join(args.brokers)}, N={args.n:,}")
    all_res: dict[str, Any] = {}
    for broker in args.brokers:
        all_res[broker] = run_broker(broker, args, tmp)
        RAW.parent.mkdir(exist_ok=True)
        RAW.write_text(json.dumps({"brokers": args.brokers, "results": all_res}, indent=1))
    took = time.time() - t0
    meta = {"took": took, "cmd": cmd.strip(), "brokers": args.brokers, "n": args.n,
            "latency_samples": args.latency_samples, "load_start": args.load_start,
            "body_n": args.body_n,
            "date": time.strftime("%Y-%m-%d %H:%M %Z", time.localtime(t0))}
    RAW.write_text(json.dumps({"brokers": args.brokers, "results": all_res, "meta": meta},
                              indent=1))
    chart_ok = not args.body_only and make_chart(RAW)  # the chart shows no-op figures
    write_report(all_res, args, took, cmd.strip(), chart_ok)
    log(f"done in {took / 60:.1f} min: {DOC.relative_to(ROOT)}"
        + (f", {PNG.relative_to(ROOT)}" if chart_ok else ""))


if __name__ == "__main__":
    main()
