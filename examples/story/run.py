"""The story: the demo shop's journey from a monolith to pools that scale themselves, run
end to end on this machine and written up as a report with plots.

    .venv/bin/python examples/story/run.py [--out DIR] [--quick] [--traffic 400]

1. The monolith on SQLite (a fresh file) under a short load: ``offload run`` with no
   topology, then ``offload profile --json`` (the indexer's measured CPU and memory).
2. ``offload plan`` on that profile (the built-in gcp catalog, ``--traffic`` to model
   production), ``--write`` a topology, ``offload check`` on it.
3. The split on Redis (a fresh key prefix, deleted after): ``offload run --topology
   --autoscale`` under signups at a rate that rises and falls, the replicas ranges set for
   this machine; 4. a rolling deploy (SIGHUP) in the middle of the peak; 5. the account
   page fanning out to two pools under one deadline all along.
6. The report: ``report.md`` and PNG plots in ``--out`` (default: a new temporary
   directory), a summary on the terminal. Exit status 1 when a task was lost.

Needs Redis on 127.0.0.1:6379 (``--redis`` to change) and matplotlib (``offload[plan]``).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
import uuid
from typing import Any

HERE = pathlib.Path(__file__).resolve().parent
EXAMPLES = HERE.parent
APP = "story_shop:app"
TRAFFIC = 400.0  # plan --traffic; docs/story.md says why so many times the measured rates
sys.path[:0] = [str(HERE)]

from report import write_report  # noqa: E402
from watch import Sampler, Supervisor, offload  # noqa: E402

#: [seconds, signups/s, searches/s] per phase. Each signup holds the indexer's memory for
#: seconds and the indexing queue runs two at a time (max_concurrent=2), so signups stay
#: under its 2 / (wait) per second on average; the web front's searches are most of the
#: traffic, as on a real shop, and rise and fall with the signups.
FULL = {
    "monolith": [[40.0, 0.15, 30.0]],
    "split": [[20.0, 0.1, 15.0], [30.0, 0.3, 45.0], [20.0, 0.1, 15.0]],
    "hup_at": 35.0,
    "page_rate": 0.1,
}
QUICK = {
    "monolith": [[15.0, 0.2, 30.0]],
    "split": [[5.0, 0.1, 10.0], [10.0, 0.3, 30.0], [5.0, 0.1, 10.0]],
    "hup_at": 10.0,
    "page_rate": 0.1,
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=pathlib.Path, help="report directory (default: a temp dir)")
    ap.add_argument("--quick", action="store_true", help="a short run (about a minute)")
    ap.add_argument(
        "--traffic", type=float, default=TRAFFIC, help=f"plan --traffic (default {TRAFFIC:g})"
    )
    ap.add_argument(
        "--index-wait",
        type=float,
        default=6.0,
        help="DEMO_INDEX_WAIT: seconds an index run holds its memory (default 6)",
    )
    ap.add_argument(
        "--index-mb", type=int, default=256, help="DEMO_INDEX_MB: an index run's memory (256)"
    )
    ap.add_argument(
        "--search-wait",
        type=float,
        default=0.05,
        help="DEMO_SEARCH_WAIT: seconds a search waits on the search index (default 0.05)",
    )
    ap.add_argument("--redis", default="redis://127.0.0.1:6379/0", help="Redis for the split")
    ap.add_argument("--web", default="1,3", help="replicas of the web pool (min,max)")
    ap.add_argument("--highmem", default="0,2", help="replicas of the indexer's pool")
    ap.add_argument("--target-latency", type=float, default=1.0, help="seconds (topology)")
    ap.add_argument("--cooldown", type=float, default=10.0, help="seconds (topology)")
    args = ap.parse_args(argv)
    for name in ("web", "highmem"):
        try:
            lo, hi = (int(x) for x in getattr(args, name).split(","))
        except ValueError:
            ap.error(f"--{name} {getattr(args, name)!r}: give min,max such as 1,3")
        if not 0 <= lo <= hi or hi < 1:
            ap.error(f"--{name} {lo},{hi}: need 0 <= min <= max and max >= 1")
        setattr(args, name, [lo, hi])
    if args.traffic <= 0:
        ap.error(f"--traffic {args.traffic}: must be more than 0")
    if args.index_wait < 0 or args.search_wait < 0 or not 1 <= args.index_mb <= 400:
        ap.error(
            f"--index-wait {args.index_wait:g} --search-wait {args.search_wait:g} --index-mb "
            f"{args.index_mb}: need waits >= 0 and 1-400 MiB (the indexer's memory_limit "
            "is 512 MiB a task)"
        )
    return args


def base_env(args: argparse.Namespace) -> dict[str, str]:
    """The environment of every process of the story: the demo importable, no topology
    from the caller's environment, output unbuffered (the log lines are timed), and the
    production-like shop: an index run holds ``--index-mb`` MiB for ``--index-wait`` s, a
    search waits ``--search-wait`` s on the search index."""
    env = {k: v for k, v in os.environ.items() if k not in ("OFFLOAD_BROKER", "STORY_LEDGER")}
    path = [str(HERE), str(EXAMPLES), *filter(None, [env.get("PYTHONPATH")])]
    env.update(PYTHONPATH=os.pathsep.join(path), OFFLOAD_TOPOLOGY="", PYTHONUNBUFFERED="1")
    env.update(DEMO_INDEX_WAIT=f"{args.index_wait:g}", DEMO_INDEX_MB=str(args.index_mb))
    env.update(DEMO_SEARCH_WAIT=f"{args.search_wait:g}")
    return env


def drive(cfg: dict[str, Any], env: dict[str, str], work: pathlib.Path, tag: str) -> dict:
    """Run driver.py with ``cfg``; its result (see driver.py)."""
    cfg_path, out_path = work / f"{tag}.driver.json", work / f"{tag}.result.json"
    cfg_path.write_text(json.dumps(cfg))
    argv = [sys.executable, str(HERE / "driver.py"), str(cfg_path), str(out_path)]
    with open(work / f"{tag}.driver.log", "w") as log:
        rc = subprocess.run(argv, cwd=HERE, env=env, stdout=log, stderr=subprocess.STDOUT)
    if rc.returncode != 0:
        tail = (work / f"{tag}.driver.log").read_text()[-3000:]
        raise SystemExit(f"story: the {tag} driver failed ({rc.returncode}):\n{tail}")
    return json.loads(out_path.read_text())


def driver_cfg(args: argparse.Namespace, load: dict, phases: str, topology: str | None) -> dict:
    """What driver.py runs: the load's phases, the pages and the deadlines. A page waits
    on one index run, so its deadline is the index wait plus 4 s; a search's is 2 s."""
    return {
        "phases": load[phases],
        "page_rate": load["page_rate"],
        "page_timeout": args.index_wait + 4.0,
        "search_timeout": 2.0,
        "topology": topology,
    }


def stage_monolith(args, plan: dict, work: pathlib.Path, out: pathlib.Path, say) -> dict:
    """1. The monolith on SQLite, measured."""
    env = {**base_env(args), "OFFLOAD_BROKER": f"sqlite:///{work / 'monolith.db'}"}
    say("1. the monolith on SQLite: offload run " + APP)
    sup = Supervisor(
        [sys.executable, "-m", "offload", "run", APP], env, str(HERE), str(work / "monolith.log")
    )
    try:
        sup.wait_for(" worker pid ", 60)
        cfg = driver_cfg(args, plan, "monolith", None)
        cfg.update(start_at=time.time() + 0.5, drain_timeout=60.0)
        result = drive(cfg, env, work, "monolith")
    finally:
        sup.stop()  # the worker flushes its measurements as it drains
    profile = offload("profile", APP, "--json", env=env, cwd=str(HERE))
    (out / "profile.json").write_text(profile)
    result["profile"] = json.loads(profile)
    return result


def stage_plan(args: argparse.Namespace, work: pathlib.Path, out: pathlib.Path, say) -> dict:
    """2. The plan: pools, shapes and prices; the written topology checked."""
    env = {**base_env(args), "OFFLOAD_BROKER": f"sqlite:///{work / 'monolith.db'}"}
    planned = out / "topology.planned.toml"
    say(f"2. offload plan --traffic {args.traffic:g} (gcp catalog), --write {planned.name}")
    common = ["plan", APP, "--profile", str(out / "profile.json"), "--traffic", str(args.traffic)]
    hand = str(EXAMPLES / "topology.toml")  # the demo's hand-written split, priced alike
    text = offload(*common, "--topology", hand, "--write", str(planned), env=env, cwd=str(HERE))
    (out / "plan.txt").write_text(text)
    plan = json.loads(offload(*common, "--topology", hand, "--json", env=env, cwd=str(HERE)))
    (out / "plan.json").write_text(json.dumps(plan, indent=1))
    plan["check"] = offload("check", APP, "--topology", str(planned), env=env, cwd=str(HERE))
    return plan


def story_topology(args: argparse.Namespace, plan: dict, out: pathlib.Path) -> tuple[str, str]:
    """The topology the split runs: the planned one when it gives the indexer a pool of
    its own, else the demo's hand-written split (examples/topology.toml); either way with
    this machine's replicas ranges and the story's target latency and cooldown. Returns
    (path, which)."""
    planned = tomllib.loads((out / "topology.planned.toml").read_text())
    pools = planned.get("pools", {})
    split = not any({"default", "indexer"} <= set(p.get("services", ())) for p in pools.values())
    source = "topology.planned.toml, the plan's" if split else "examples/topology.toml"
    if not split:
        planned = tomllib.loads((EXAMPLES / "topology.toml").read_text())
    lines = ["# The story's topology: " + source + ", replicas set for one small machine", ""]
    for name, table in planned.items():
        if name == "pools":
            continue
        for sub, values in table.items():  # e.g. [machines.NAME] of a catalog file
            lines.append(f"[{name}.{sub}]")
            lines += [f"{k} = {json.dumps(v)}" for k, v in values.items()]
            lines.append("")
    for name, pool in planned["pools"].items():
        pool = dict(pool)
        pool["replicas"] = args.highmem if "indexer" in pool["services"] else args.web
        pool["target_latency"], pool["cooldown"] = args.target_latency, args.cooldown
        lines.append(f"[pools.{name}]")
        lines += [f"{k} = {json.dumps(v)}" for k, v in pool.items()]
        lines.append("")
    path = out / "topology.story.toml"
    path.write_text("\n".join(lines))
    return str(path), source


def clean_redis(url: str, prefix: str) -> int:
    """Delete every key of the story's prefix; how many there were."""
    import redis

    r = redis.Redis.from_url(url)
    try:
        keys = list(r.scan_iter(match=f"*{prefix}*", count=1000))
        for i in range(0, len(keys), 500):
            r.delete(*keys[i : i + 500])
        return len(keys)
    finally:
        r.close()


def stage_split(args, plan: dict, topology: str, work: pathlib.Path, say) -> dict:
    """3-5. The split on Redis with the autoscaler, a rolling deploy mid-load, the page."""
    prefix = "story" + uuid.uuid4().hex[:10]
    broker = f"{args.redis}{'&' if '?' in args.redis else '?'}prefix={prefix}"
    env = {**base_env(args), "OFFLOAD_BROKER": broker}
    env["STORY_LEDGER"] = f"{args.redis.split('?')[0]}#{prefix}:ledger"
    say(f"3. the split on Redis (prefix {prefix}): offload run --topology --autoscale")
    argv = [sys.executable, "-m", "offload", "run", APP, "--topology", topology]
    argv += ["--autoscale", "--grace", "20"]
    sup = Supervisor(argv, env, str(HERE), str(work / "split.log"))
    sampler = None
    try:
        sup.wait_for("[offload] autoscale", 60)
        sup.wait_for(" worker pid ", 60)
        sampler = Sampler(sup)
        start_at = time.time() + 1.0
        cfg = driver_cfg(args, plan, "split", topology)
        cfg.update(start_at=start_at, drain_timeout=90.0)
        hup: dict[str, float] = {}

        def deploy() -> None:
            time.sleep(max(0.0, start_at + plan["hup_at"] - time.time()))
            say(f"4. rolling deploy: SIGHUP to offload run at t={plan['hup_at']:g}s")
            hup["t"] = sup.hup()

        timer = threading.Thread(target=deploy, daemon=True)
        timer.start()
        say(
            "5. signups and searches rising and falling, the account page fanning out under "
            f"a {cfg['page_timeout']:g} s deadline"
        )
        result = drive(cfg, env, work, "split")
        timer.join()
        try:
            sup.wait_for("reload done", 60, after=hup.get("t", 0.0))
        except SystemExit as exc:
            result["reload_error"] = str(exc).splitlines()[0]
        time.sleep(1.0)
        result["samples"] = sampler.stop()
        sampler = None
    finally:
        if sampler is not None:
            sampler.stop()
        sup.stop()
        result_lines = list(sup.lines)
        removed = clean_redis(args.redis, prefix)
    result.update(lines=result_lines, hup=hup.get("t"), prefix=prefix, keys_removed=removed)
    return result


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    plan_of_load = QUICK if args.quick else FULL
    out = args.out or pathlib.Path(tempfile.mkdtemp(prefix="offload-story-"))
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()

    def say(line: str) -> None:
        print(f"[story {time.time() - t0:5.1f}s] {line}", flush=True)

    with tempfile.TemporaryDirectory(prefix="offload-story-work-") as tmp:
        work = pathlib.Path(tmp)
        mono = stage_monolith(args, plan_of_load, work, out, say)
        plan = stage_plan(args, work, out, say)
        topology, source = story_topology(args, plan, out)
        offload("check", APP, "--topology", topology, env=base_env(args), cwd=str(HERE))
        split = stage_split(args, plan_of_load, topology, work, say)
        for name in ("monolith.log", "split.log"):  # the supervisor logs, kept with the report
            (out / name).write_text((work / name).read_text())
    settings = {
        "traffic": args.traffic,
        "index_wait": args.index_wait,
        "index_mb": args.index_mb,
        "search_wait": args.search_wait,
        "page_timeout": args.index_wait + 4.0,
        "web": args.web,
        "highmem": args.highmem,
        "target_latency": args.target_latency,
        "cooldown": args.cooldown,
        "load": plan_of_load,
        "topology_source": source,
        "took": time.time() - t0,
        "quick": args.quick,
    }
    summary = write_report(out, settings, mono, plan, split)
    print(summary)
    print(f"report: {out / 'report.md'}")
    return 1 if summary.lost else 0


if __name__ == "__main__":
    sys.exit(main())
