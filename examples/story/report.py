"""The story's report: the figures (sent, run, lost, duplicates, latencies, workers,
memory, cost) computed from what the stages recorded, ``report.md`` with two plots
(``timeline.png``: load, queue latency, workers and memory per pool over time;
``cost.png``: monthly cost before and after), and the terminal summary."""

from __future__ import annotations

import pathlib
import re
from dataclasses import dataclass
from typing import Any

DECISION = re.compile(r"autoscale (?P<pool>[\w.-]+): (?P<a>\d+)→(?P<b>\d+) workers?: (?P<why>.*)")
MiB = 2**20
PAGE = 10_000_000  # story_shop.PAGE_USERS: the page's own user ids start here


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


@dataclass
class Summary:
    """The figures the terminal shows and the exit status depends on."""

    sent: int
    expected: int
    ran: int
    dead: int
    lost: int
    duplicates: int
    runs: int
    pages: int
    pages_ok: int
    pages_late: int
    searches: int
    searches_ok: int
    monolith_cost: float
    plan_cost: float
    saving: float
    took: float

    def __str__(self) -> str:
        return (
            f"story: {self.sent} signups -> {self.expected} tasks sent; {self.ran} ran, "
            f"{self.dead} dead-lettered by their own policy, {self.lost} lost, "
            f"{self.duplicates} duplicate run(s) ({self.runs} successful runs); "
            f"{self.pages} pages: {self.pages_ok} in time, {self.pages_late} "
            f"DeadlineExceeded; {self.searches} search calls, {self.searches_ok} answered; "
            f"monthly ${self.monolith_cost:,.2f} monolith -> "
            f"${self.plan_cost:,.2f} planned ({self.saving:.1f}% saved); "
            f"{self.took:.0f}s in all"
        )


def ledger_figures(split: dict) -> dict[str, Any]:
    """Sent, ran, dead, lost and duplicates from the ledger and the dead letters."""
    runs, dead = split["runs"], split["dead"]
    expected = [f"{k}:{uid}" for uid in split["sent"] for k in ("index", "charge", "welcome")]
    ran = [k for k in expected if runs.get(k, 0) > 0]
    died = [k for k in expected if k not in runs and k in dead]
    lost = [k for k in expected if k not in runs and k not in dead]
    dups = sum(max(0, runs.get(k, 0) - 1) for k in expected)
    reasons: dict[str, int] = {}
    for k in died:
        reasons[dead[k]] = reasons.get(dead[k], 0) + 1
    return {
        "expected": expected,
        "ran": len(ran),
        "dead": len(died),
        "lost": lost,
        "duplicates": dups,
        "runs": sum(runs.get(k, 0) for k in expected),
        "reasons": reasons,
    }


def task_latency(split: dict) -> dict[str, list[tuple[float, float]]]:
    """Per pool: (sent time, first start - sent) of every signup task that ran."""
    pool = split["pool_of_queue"]
    queue_of = {"index": "indexing", "charge": "payments", "welcome": "emails"}
    out: dict[str, list[tuple[float, float]]] = {}
    for key, started in split["first"].items():
        kind, _, uid = key.partition(":")
        sent = split["sent"].get(uid)
        if sent is None or kind not in queue_of:
            continue
        out.setdefault(pool[queue_of[kind]], []).append((sent, started - sent))
    return out


def decisions(lines: list[list[Any]], t0: float) -> list[tuple[float, str]]:
    keep = ("autoscale ", "reload", "drained and stopped", "started ")
    return [
        (t - t0, line.split("] ", 1)[-1])
        for t, line in lines
        if line.startswith("[offload]") and any(k in line for k in keep)
    ]


def plot_timeline(path: pathlib.Path, split: dict, t0: float, lat: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pools = sorted(split["queues_of"])
    fig, axes = plt.subplots(4, 1, figsize=(9, 10), sharex=True)
    searched = sorted(r["t"] - t0 for r in split.get("searches", []))
    if searched:
        buckets: dict[int, int] = {}
        for x in searched:
            buckets[int(x)] = buckets.get(int(x), 0) + 1
        xs = list(range(0, int(searched[-1]) + 1))
        axes[0].plot(xs, [buckets.get(x, 0) for x in xs], label="search calls /s", color="C0")
    sent = sorted(t - t0 for t in split["sent"].values())
    axes[0].plot(sent, [0] * len(sent), "|", markersize=12, color="C1", label="a signup")
    deadline = split.get("page_timeout", 2.0)
    late = [p["t"] - t0 for p in split["pages"] if p["outcome"] == "deadline"]
    ok = [(p["t"] - t0, p["latency"]) for p in split["pages"] if p["outcome"] == "ok"]
    ax2 = axes[0].twinx()
    ax2.scatter([x for x, _ in ok], [y for _, y in ok], s=8, color="C2", label="page latency (s)")
    ax2.scatter(
        late, [deadline] * len(late), s=14, marker="x", color="C3", label="DeadlineExceeded"
    )
    ax2.set_ylabel("page latency, s")
    axes[0].set_ylabel("search calls/s")
    axes[0].set_title(f"load, and the account page's fan-out (deadline {deadline:g} s)")
    h1, l1 = axes[0].get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    axes[0].legend(h1 + h2, l1 + l2, loc="upper right", fontsize=7)
    for i, pool in enumerate(pools):
        xs = [r["t"] - t0 for r in split["polled"] if pool in r]
        ys = [r[pool]["oldest_ready_age"] for r in split["polled"] if pool in r]
        axes[1].plot(xs, ys, label=f"{pool}: oldest ready task's age", color=f"C{i}")
        pts = sorted(lat.get(pool, []))
        axes[1].scatter(
            [s - t0 for s, _ in pts], [v for _, v in pts], s=2, alpha=0.3, color=f"C{i}"
        )
    axes[1].set_ylabel("seconds")
    axes[1].set_title("queue latency per pool (line: polled; dots: each task, start - sent)")
    axes[1].legend(fontsize=7)
    samples = split["samples"]
    for i, pool in enumerate(pools):
        xs = [r["t"] - t0 for r in samples]
        axes[2].step(xs, [r["workers"].get(pool, 0) for r in samples], where="post",
                     label=pool, color=f"C{i}")  # fmt: skip
        axes[3].plot(xs, [r["rss"].get(pool, 0) / MiB for r in samples], label=pool,
                     color=f"C{i}")  # fmt: skip
    axes[2].set_ylabel("worker processes")
    axes[2].set_title("workers per pool (a rolling deploy briefly doubles them)")
    axes[2].legend(fontsize=7)
    axes[3].set_ylabel("MiB")
    axes[3].set_title("memory per pool: RSS of its workers and their child processes")
    axes[3].legend(fontsize=7)
    axes[3].set_xlabel("seconds since the load began")
    for ax in axes:
        if split.get("hup"):
            ax.axvline(split["hup"] - t0, color="k", linestyle="--", linewidth=0.8)
        ax.grid(alpha=0.3)
    if split.get("hup"):
        axes[0].annotate(
            " SIGHUP", (split["hup"] - t0, 0.02), xycoords=("data", "axes fraction"), fontsize=7
        )
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def plot_cost(path: pathlib.Path, plan: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bars = [("monolith", plan["monolith_monthly_cost"])]
    if plan.get("current_monthly_cost") is not None:
        bars.append(("demo's split\n(examples/topology.toml)", plan["current_monthly_cost"]))
    bars.append(("plan", plan["monthly_cost"]))
    fig, ax = plt.subplots(figsize=(6, 3.2))
    ax.bar([b[0] for b in bars], [b[1] for b in bars], color=["C7", "C1", "C2"][: len(bars)])
    for i, (_, v) in enumerate(bars):
        ax.text(i, v, f"${v:,.2f}", ha="center", va="bottom", fontsize=8)
    ax.set_ylabel("$ per month (730 h)")
    ax.set_title(f"monthly cost at {plan['traffic']:g}x the measured traffic (gcp)")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def pool_rows(plan: dict) -> list[str]:
    rows = ["| pool | services | machine | replicas | concurrency | monthly |"]
    rows.append("|---|---|---|---:|---:|---:|")
    for p in [*plan["pools"], {**plan["monolith"], "name": "(monolith)"}]:
        rows.append(
            f"| {p['name']} | {', '.join(p['services'])} | {p['machine']} | {p['replicas']} "
            f"| {p['concurrency']} | ${p['monthly_cost']:,.2f} |"
        )
    return rows


def demand_rows(plan: dict) -> list[str]:
    """The planner's demand per service (before its margin), with memory per core: the
    figure a high-memory shape (8 GiB per vCPU) or a standard one (4) is chosen on."""
    rows = ["| service | runs/s | cores | in flight | memory | GiB per core |"]
    rows.append("|---|---:|---:|---:|---:|---:|")
    for d in plan["demand"]:
        per_core = d["memory"] / 2**30 / d["cores"] if d["cores"] > 0 else float("inf")
        rows.append(
            f"| {d['service']} ({d['executor']}) | {d['rate']:,.1f} | {d['cores']:.2f} | "
            f"{d['concurrency']:.1f} | {d['memory'] / 2**30:.2f} GiB | {per_core:.1f} |"
        )
    return rows


def indexer_row(profile: dict) -> str:
    for t in profile["tasks"]:
        if t["task"].endswith("index_document"):
            return (
                f"{t['runs']} runs at {t['rate']:.2f}/s; wall p50/p90 "
                f"{t['wall_p50'] * 1e3:.0f}/{t['wall_p90'] * 1e3:.0f} ms, CPU p50/p90 "
                f"{t['cpu_p50'] * 1e3:.0f}/{t['cpu_p90'] * 1e3:.0f} ms, peak RSS p90 "
                f"{t['rss_peak_p90'] / MiB:.1f} MiB (exact: {t['rss_exact']})"
            )
    return "not measured"


def write_report(out: pathlib.Path, settings: dict, mono: dict, plan: dict, split: dict) -> Summary:
    """Write report.md, timeline.png and cost.png into ``out``; the summary."""
    t0 = split["start_at"]
    led = ledger_figures(split)
    lat = task_latency(split)
    split.setdefault("page_timeout", settings["page_timeout"])
    plot_timeline(out / "timeline.png", split, t0, lat)
    plot_cost(out / "cost.png", plan)
    pages = split["pages"]
    found = split.get("searches", [])
    found_ok = [r["latency"] for r in found if r["outcome"] == "ok"]
    found_late = sum(1 for r in found if r["outcome"] == "deadline")
    ok = [p["latency"] for p in pages if p["outcome"] == "ok"]
    late = [p for p in pages if p["outcome"] == "deadline"]
    errors = [p for p in pages if p["outcome"] not in ("ok", "deadline")]
    page_runs = sum(
        v for k, v in split["runs"].items() if k.startswith("index:") and int(k[6:]) >= PAGE
    )
    samples = split["samples"]
    pools = sorted(split["queues_of"])
    events = decisions(split["lines"], t0)
    s = Summary(
        sent=len(split["sent"]),
        expected=len(led["expected"]),
        ran=led["ran"],
        dead=led["dead"],
        lost=len(led["lost"]) + int(split["unfinished"]),
        duplicates=led["duplicates"],
        runs=led["runs"],
        pages=len(pages),
        pages_ok=len(ok),
        pages_late=len(late),
        searches=len(found),
        searches_ok=len(found_ok),
        monolith_cost=plan["monolith_monthly_cost"],
        plan_cost=plan["monthly_cost"],
        saving=plan["saving"],
        took=settings["took"],
    )
    load = settings["load"]
    phases = " → ".join(
        f"{r:g} signups/s and {q:g} searches/s for {d:g} s" for d, r, q in load["split"]
    )
    deadline = settings["page_timeout"]
    split_pools = [p for p in plan["pools"] if "indexer" in p["services"]]
    own = bool(split_pools) and split_pools[0]["services"] == ["indexer"]
    md = [
        "# The story: the demo shop from a monolith to pools that scale themselves",
        "",
        "Produced by `examples/story/run.py`"
        + (" --quick" if settings["quick"] else "")
        + f" in {settings['took']:.0f} s on one machine (see docs/story.md).",
        "",
        "## Summary",
        "",
        "| what | figure |",
        "|---|---:|",
        f"| signups sent during the split run | {s.sent} |",
        f"| tasks sent (index, charge, welcome per signup) | {s.expected} |",
        f"| tasks run (distinct, in the ledger) | {s.ran} |",
        f"| dead-lettered by their own retry policy | {s.dead} |",
        f"| **lost** (sent, never run, not dead-lettered, or left in a queue) | **{s.lost}** |",
        f"| duplicate runs (beyond one per task; at-least-once allows them) | {s.duplicates} |",
        f"| search calls (pool web, deadline 2 s): answered / DeadlineExceeded / other errors | {len(found_ok)} / {found_late} / {len(found) - len(found_ok) - found_late} |",  # noqa: E501
        f"| search call latency p50 / p99 (answered) | {pct(found_ok, 0.5) * 1e3:.0f} / {pct(found_ok, 0.99) * 1e3:.0f} ms |",  # noqa: E501
        f"| account pages (fan-out to two pools, deadline {deadline:g} s) | {s.pages} |",
        f"| pages answered in time / DeadlineExceeded / other errors | {len(ok)} / {len(late)} / {len(errors)} |",  # noqa: E501
        f"| page latency p50 / p90 / max (answered) | {pct(ok, 0.5) * 1e3:.0f} / {pct(ok, 0.9) * 1e3:.0f} / {max(ok, default=float('nan')) * 1e3:.0f} ms |",  # noqa: E501
        f"| monthly cost: monolith → plan (at {settings['traffic']:g}x traffic) | ${s.monolith_cost:,.2f} → ${s.plan_cost:,.2f} ({s.saving:.1f}% saved) |",  # noqa: E501
        "",
        "## 1. The monolith, measured",
        "",
        f"`offload run story_shop:app` (no topology: every queue in one worker process) on a "
        f"fresh SQLite file, for {load['monolith'][0][0]:g} s: signups at "
        f"{load['monolith'][0][1]:g}/s, search calls at {load['monolith'][0][2]:g}/s and "
        f"account pages at {load['page_rate']:g}/s; then `offload profile --json` (saved as "
        "`profile.json`). The shop is set up as in production, through the demo's "
        f"environment: `DEMO_INDEX_WAIT={settings['index_wait']:g}` (an index run holds "
        f"its memory {settings['index_wait']:g} s waiting on storage), "
        f"`DEMO_INDEX_MB={settings['index_mb']}` (the memory it holds), "
        f"`DEMO_SEARCH_WAIT={settings['search_wait']:g}` (a search's query on the search "
        "index). The indexer (`index_document`, process executor): "
        f"{indexer_row(mono['profile'])}.",
        "",
        "## 2. The plan",
        "",
        f"`offload plan --profile profile.json --traffic {settings['traffic']:g}` on the "
        "built-in gcp catalog. The traffic multiplier models production: the profile's "
        "rates are this short run's (a rate is read over at least a minute), so "
        f"{settings['traffic']:g}x stands for a busier shop. The demand it derives "
        "(cores = rate x CPU p90; memory = rate x wall p90 x peak RSS p90):",
        "",
        *demand_rows(plan),
        "",
        "`--write` gave `topology.planned.toml`; `offload check` accepted it:",
        "",
        *pool_rows(plan),
        "",
        f"Saving against the monolith: **{plan['saving']:.1f}%**"
        + (
            f"; the demo's hand-written split (`examples/topology.toml`) sized for the same "
            f"demand: ${plan['current_monthly_cost']:,.2f}."
            if plan.get("current_monthly_cost") is not None
            else "."
        ),
        "",
        "![cost](cost.png)",
        "",
        "```text",
        plan["check"].strip(),
        "```",
        "",
    ]
    if own:
        mine = next(p for p in plan["pools"] if p["services"] == ["indexer"])
        md += [
            f"**The plan gives the indexer a pool of its own on `{mine['machine']}`.** Each "
            "index run holds its memory for seconds while using a fraction of a second of "
            "CPU, so the indexer's demand is far more memory per core than a standard "
            "shape's 4 GiB per vCPU: a high-memory shape carries it with fewer vCPUs. The "
            "monolith pays twice: on one shape for both, and with every slot of every "
            "replica sized for an index run, including the many slots that only wait on "
            "a search.",
            "",
        ]
    else:
        md += [
            "**The plan did not give the indexer a pool of its own** at this traffic: as "
            "measured here the indexer spends about as much CPU touching its memory as it "
            "waits, which is a high-CPU shape's ratio, and the gcp e2 shapes price vCPUs and "
            "memory linearly, so one pool costs the same. The split run below therefore "
            "uses the demo's hand-written split (`examples/topology.toml`); docs/story.md "
            "says what would make the indexer memory-bound.",
            "",
        ]
    md += [
        "## 3-5. The split on Redis, autoscaled, a rolling deploy, the fan-out",
        "",
        f"`offload run story_shop:app --topology topology.story.toml --autoscale` (from "
        f"{settings['topology_source']}) on Redis under a fresh key prefix, deleted after "
        f"({split['keys_removed']} keys). Replicas set for this 2-core machine: web "
        f"{settings['web']}, indexer's pool {settings['highmem']}; target latency "
        f"{settings['target_latency']:g} s, cooldown {settings['cooldown']:g} s. Load: "
        f"{phases}. SIGHUP at t={load['hup_at']:g} s"
        + (f" ({split['reload_error']})" if split.get("reload_error") else "")
        + f". The account page ({load['page_rate']:g}/s) asks the search service (pool "
        f"web) and the indexer at once under one {deadline:g} s deadline (Context + "
        f"ErrGroup: an index run takes {settings['index_wait']:g} s); its {page_runs} "
        "indexer runs are not counted among the signup tasks.",
        "",
        "![timeline](timeline.png)",
        "",
        "| pool | workers at most | peak RSS (MiB) | task latency p50 / p99 / max (s) |",
        "|---|---:|---:|---|",
    ]
    for pool in pools:
        w = max((r["workers"].get(pool, 0) for r in samples), default=0)
        m = max((r["rss"].get(pool, 0) for r in samples), default=0) / MiB
        v = [x for _, x in lat.get(pool, [])]
        md.append(
            f"| {pool} | {w} | {m:.0f} | {pct(v, 0.5):.2f} / {pct(v, 0.99):.2f} / "
            f"{max(v, default=float('nan')):.2f} |"
        )
    md += [
        "",
        "Task latency is each signup task's first start minus its send (from the ledger); "
        f"the web pool's search calls, {len(found)} of them, took {pct(found_ok, 0.5) * 1e3:.0f}"
        f" / {pct(found_ok, 0.99) * 1e3:.0f} ms (p50 / p99, answered, send to answer).",
    ]
    md += ["", "What the supervisor did (its own log lines, seconds since the load began):", ""]
    md += ["```text", *[f"{t:6.1f}  {line}" for t, line in events], "```", ""]
    if led["reasons"]:
        md += ["Dead letters (each a task whose own policy gave up, not a loss):", ""]
        reasons = sorted(led["reasons"].items())
        md += [f"- {n} x {why}" for why, n in reasons[:5]]
        if len(reasons) > 5:
            md.append(f"- and {sum(n for _, n in reasons[5:])} more of the same kind")
        md.append("")
    if led["lost"]:
        md += [f"**Lost:** {', '.join(led['lost'][:20])}", ""]
    if errors:
        md += ["Page errors:", "", *[f"- {p['outcome']}" for p in errors[:10]], ""]
    # file names relative to the report, never this machine's paths
    text = "\n".join(md).replace(str(out) + "/", "")
    (out / "report.md").write_text(text)
    return s
