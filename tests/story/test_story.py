"""The story (examples/story/run.py) end to end with tiny settings: the monolith measured,
the plan written and checked (the indexer on its own high-memory pool, for less than the
monolith), the split on Redis autoscaled with a SIGHUP mid-load and
the fan-out page, then the report: nothing lost, the files written, the key prefix gone.
And the ledger's arithmetic on a made-up record: a missing task is lost, a second run a
duplicate, a dead-lettered one neither."""

from __future__ import annotations

import json
import pathlib
import re
import subprocess
import sys

import pytest

from tests.conftest import REDIS_URL, require_server

ROOT = pathlib.Path(__file__).resolve().parents[2]
STORY = ROOT / "examples" / "story"


def test_the_ledger_counts_lost_duplicates_and_dead_letters_apart():
    sys.path.insert(0, str(STORY))
    try:
        from report import ledger_figures
    finally:
        sys.path.remove(str(STORY))
    split = {
        "sent": {"1": 0.0, "2": 0.0},
        "runs": {"index:1": 1, "charge:1": 2, "welcome:1": 1, "index:2": 1, "welcome:2": 1},
        "dead": {},
    }
    f = ledger_figures(split)
    assert (f["ran"], f["dead"], f["lost"], f["duplicates"]) == (5, 0, ["charge:2"], 1)
    split["dead"] = {"charge:2": "RuntimeError: card declined"}
    f = ledger_figures(split)
    assert (f["ran"], f["dead"], f["lost"], f["duplicates"]) == (5, 1, [], 1)
    assert f["reasons"] == {"RuntimeError: card declined": 1}


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_the_story_runs_end_to_end_and_loses_nothing(tmp_path):
    require_server("redis")
    pytest.importorskip("matplotlib")
    out = tmp_path / "report"
    argv = [sys.executable, str(STORY / "run.py"), "--quick", "--out", str(out)]
    done = subprocess.run(
        [*argv, "--redis", REDIS_URL.split("?")[0]],
        capture_output=True,
        text=True,
        timeout=170,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = next(line for line in done.stdout.splitlines() if line.startswith("story: "))
    assert " 0 lost," in summary
    sent = int(re.search(r"-> (\d+) tasks sent", summary)[1])
    ran = int(re.search(r"; (\d+) ran, ", summary)[1])
    dead = int(re.search(r"(\d+) dead-lettered", summary)[1])
    assert sent >= 9 and ran + dead == sent  # signups are few: each holds 256 MiB for 6 s
    searches = re.search(r"(\d+) search calls, (\d+) answered", summary)
    assert int(searches[1]) > 200 and int(searches[2]) >= 0.95 * int(searches[1])
    for name in ("report.md", "timeline.png", "cost.png", "profile.json", "plan.json"):
        assert (out / name).stat().st_size > 0, name
    for name in ("topology.planned.toml", "topology.story.toml", "split.log"):
        assert (out / name).exists(), name
    # the plan splits the indexer off onto a high-memory shape, the web services onto a
    # standard-ratio one, for less than the monolith; and the split runs that topology
    plan = json.loads((out / "plan.json").read_text())
    pools = {tuple(p["services"]): p["machine"] for p in plan["pools"]}
    assert ("indexer",) in pools, plan["pools"]  # on a pool of its own
    # Which shape is cheapest follows the measured demand: about 7.5 GiB per core (256 MiB
    # held ~6 s for ~0.2 s of CPU) fits e2-highmem (8 GiB per vCPU); the crossover with
    # e2-standard (4) is near 5.4 GiB per core at the catalog's prices. A loaded machine
    # measures more CPU per index run (its page faults cost more), and then a
    # standard shape is the right answer: the test checks the plan against its own demand.
    ix = next(d for d in plan["demand"] if d["service"] == "indexer")
    if ix["memory"] / 2**30 / ix["cores"] >= 6.0:
        assert pools[("indexer",)].startswith("e2-highmem-"), (plan["pools"], ix)
    web = pools.get(("default",), "")
    assert web.startswith(("e2-standard-", "e2-highcpu-", "e2-micro", "e2-small", "e2-medium"))
    # Cheaper than the monolith, by the planner's own arithmetic. Not by a set margin: the
    # web services are ~5% of the quick story's measured cores, so what the split saves
    # beyond them is machine rounding (21.5% in one run, 4.17% in two on a loaded
    # machine, both right for the demand measured).
    assert plan["monthly_cost"] < plan["monolith_monthly_cost"], plan
    saved = 100 * (1 - plan["monthly_cost"] / plan["monolith_monthly_cost"])
    assert plan["saving"] == pytest.approx(saved, abs=0.02)
    assert "planned" in (out / "topology.story.toml").read_text().splitlines()[0]
    report = (out / "report.md").read_text()
    assert "| **lost** (sent, never run, not dead-lettered, or left in a queue) | **0** |" in report
    assert "reload done" in report  # the SIGHUP rolled every worker over
    assert re.search(r"autoscale \w+: 0→1 workers", report)  # the min-0 pool woke
    # the split's Redis keys were deleted
    import redis

    prefix = re.search(r"prefix (story\w+)\)", done.stdout)[1]
    r = redis.Redis.from_url(REDIS_URL.split("?")[0])
    try:
        assert list(r.scan_iter(match=f"*{prefix}*")) == []
    finally:
        r.close()
