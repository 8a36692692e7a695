"""``offload plan``: synthetic profiles with a known answer, costs checked against the
catalog, the written topology checked by ``offload check``, and every bad input refused
in one clear line."""

from __future__ import annotations

import json
import math
import sys
import tomllib

import pytest
from click.testing import CliRunner

from offload.catalog import load_catalog
from offload.cli import main
from offload.planner import BASE_MEMORY, HOURS_PER_MONTH, THREAD_CORES, allocatable

APP = "tests.ops.opsapp:app"
GIB = 1024**3
MIB = 1024**2


def row(task, service, queue, rate, wall_p90, cpu_p90, rss_p90, rss_max=None, runs=1000):
    return {
        "task": task, "service": service, "queue": queue, "runs": runs, "failures": 0,
        "rate": rate, "wall_p50": wall_p90 / 2, "wall_p90": wall_p90,
        "cpu_p50": cpu_p90 / 2, "cpu_p90": cpu_p90, "rss_peak_p50": rss_p90 // 2,
        "rss_peak_p90": rss_p90, "rss_peak_max": rss_max or rss_p90,
    }  # fmt: skip


def profile(*tasks):
    services = sorted({t["service"] for t in tasks})
    return {
        "tasks": list(tasks),
        "services": [
            {
                "service": s,
                "executor": "thread",
                "memory_limit": None,
                "runs": sum(t["runs"] for t in tasks if t["service"] == s),
                "rate": sum(t["rate"] for t in tasks if t["service"] == s),
            }
            for s in services
        ],
    }


# A CPU-bound web service (2.5 cores, 5 in flight, 20 MiB a task) and a memory-hungry,
# CPU-light indexer (0.1 core, 2 in flight, 3 GiB a task).
WEB = row("render_page", "web", "web", 50.0, 0.1, 0.05, 20 * MIB, 40 * MIB)
INDEXER = row("build_index", "indexer", "indexing", 0.5, 4.0, 0.2, 3 * GIB, int(3.5 * GIB))
SHOP = profile(WEB, INDEXER)

CATALOG = {
    "std": {"cpu": 2, "memory": "8GiB", "price_per_hour": 0.10},
    "himem": {"cpu": 2, "memory": "64GiB", "price_per_hour": 0.30},
}


@pytest.fixture
def files(tmp_path):
    def write(name, data):
        path = tmp_path / name
        if isinstance(data, str):
            path.write_text(data)
        elif name.endswith(".toml"):
            path.write_text(
                "".join(
                    f'[machines.{n}]\ncpu = {m["cpu"]}\nmemory = "{m["memory"]}"\n'
                    f"price_per_hour = {m['price_per_hour']}\n"
                    for n, m in data.items()
                )
            )
        else:
            path.write_text(json.dumps(data))
        return str(path)

    return write


def run(*args):
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    return result


def plan_json(*args, app=APP):
    result = run("plan", app, "--json", *args)
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def test_memory_hungry_and_cpu_bound_services_get_the_cheaper_split(files):
    """Worked by hand from the method (docs/operations.md), thread executor, 15% margin:

    web: 2.5 x 1.15 = 2.875 cores, at most 1 core per worker process -> 3 replicas of
    either shape; std is the cheaper. indexer: one slot needs 3 GiB x 1.15 = 3.45 GiB; a
    std replica has room for 1 (8 GiB less the reserve and the base), so its 2 in flight
    need 2 std; himem would hold both on one, at 0.30 > 2 x 0.10. The monolith's 7 in
    flight each need a 3.45 GiB slot: 7 std (0.70/h) or 3 himem (0.90/h)."""
    catalog = files("catalog.toml", CATALOG)
    out = plan_json("--profile", files("p.json", SHOP), "--catalog", catalog)
    pools = {p["name"]: p for p in out["pools"]}
    web = next(p for p in out["pools"] if "web" in p["services"])
    indexer = next(p for p in out["pools"] if "indexer" in p["services"])
    assert web is not indexer
    assert (web["machine"], web["replicas"]) == ("std", 3)
    assert (indexer["machine"], indexer["replicas"]) == ("std", 2)
    # the default service (its built-in push task) has no runs: placed, not sized
    assert out["unmeasured"] == ["default"]
    assert sum("default" in p["services"] for p in pools.values()) == 1
    price = {n: m["price_per_hour"] for n, m in CATALOG.items()}
    expected = (3 + 2) * price["std"] * HOURS_PER_MONTH
    mono = 7 * price["std"] * HOURS_PER_MONTH
    assert out["monthly_cost"] == pytest.approx(expected, abs=0.01)
    assert (out["monolith"]["machine"], out["monolith"]["replicas"]) == ("std", 7)
    assert out["monolith_monthly_cost"] == pytest.approx(mono, abs=0.01)
    assert out["saving"] == pytest.approx((mono - expected) / mono * 100, abs=0.01)
    for p in out["pools"]:
        assert p["monthly_cost"] == pytest.approx(
            p["replicas"] * price[p["machine"]] * HOURS_PER_MONTH, abs=0.01
        )


def _fits(machine, cores, slots, slot_memory, largest, n):
    """The documented constraints, written again from docs/operations.md."""
    cpu, mem = allocatable(machine)
    cpu = min(cpu, THREAD_CORES)
    c = max(1, math.ceil(slots / n - 1e-9))
    return (
        n * cpu >= cores * 1.15 - 1e-9
        and BASE_MEMORY + c * slot_memory * 1.15 <= mem
        and BASE_MEMORY + largest <= mem
    )


def _cheapest_by_hand(shapes, cores, slots, slot_memory, largest):
    best = math.inf
    for m in shapes:
        for n in range(1, 200):
            if _fits(m, cores, slots, slot_memory, largest, n):
                best = min(best, n * m.price_per_hour * HOURS_PER_MONTH)
                break
    return best


@pytest.mark.parametrize("catalog", ["gcp", "aws"])
def test_costs_match_the_builtin_catalog_by_hand(files, catalog):
    out = plan_json("--profile", files("p.json", SHOP), "--catalog", catalog)
    builtin = load_catalog()
    provider = {"gcp": "gce", "aws": "aws"}[catalog]
    shapes = [m for m in builtin.values() if m.provider == provider]
    for p in out["pools"]:
        m = builtin[p["machine"]]
        assert m.provider == provider
        assert p["monthly_cost"] == pytest.approx(
            p["replicas"] * m.price_per_hour * HOURS_PER_MONTH, abs=0.01
        )
    # each measured service alone, and all together, at the cheapest shape by brute force
    web = _cheapest_by_hand(shapes, 2.5, 5.0, 20 * MIB, 40 * MIB)
    indexer = _cheapest_by_hand(shapes, 0.1, 2.0, 3 * GIB, int(3.5 * GIB))
    together = _cheapest_by_hand(shapes, 2.6, 7.0, 3 * GIB, int(3.5 * GIB))
    assert out["monthly_cost"] == pytest.approx(min(web + indexer, together), abs=0.02)
    assert out["monolith_monthly_cost"] == pytest.approx(together, abs=0.02)
    assert out["monthly_cost"] < out["monolith_monthly_cost"]


def test_traffic_scales_the_replicas(files):
    catalog = files("catalog.toml", CATALOG)
    path = files("p.json", SHOP)
    base = plan_json("--profile", path, "--catalog", catalog)
    ten = plan_json("--profile", path, "--catalog", catalog, "--traffic", "10")

    def web(out):
        return next(p for p in out["pools"] if "web" in p["services"])

    # 28.75 cores at one core per worker process: 29 replicas
    assert web(ten)["replicas"] == 29 > web(base)["replicas"] * 9
    assert ten["monthly_cost"] > base["monthly_cost"] * 5
    assert ten["traffic"] == 10


def test_the_written_topology_passes_offload_check(files, tmp_path):
    topo = tmp_path / "plan.toml"
    report = tmp_path / "report"
    result = run(
        "plan", APP, "--profile", files("p.json", SHOP), "--catalog", "gcp",
        "--write", str(topo), "--report", str(report),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "saving" in result.output and "monolith" in result.output
    data = tomllib.loads(topo.read_text())
    for pool in data["pools"].values():
        lo, hi = pool["replicas"]
        assert 1 <= lo < hi and pool["concurrency"] >= 1
    check = run("check", APP, "--topology", str(topo))
    assert check.exit_code == 0, check.output
    assert check.output.rstrip().endswith("ok")
    md = (report / "report.md").read_text()
    assert "demand.png" in md and "cost.png" in md and "saving" in md
    for png in ("demand.png", "cost.png"):
        assert (report / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_custom_catalog_is_written_into_the_topology(files, tmp_path):
    topo = tmp_path / "plan.toml"
    catalog = files("catalog.toml", CATALOG)
    result = run("plan", APP, "--profile", files("p.json", SHOP), "--catalog", catalog,
                 "--write", str(topo))  # fmt: skip
    assert result.exit_code == 0, result.output
    data = tomllib.loads(topo.read_text())
    assert data["machines"]["std"]["price_per_hour"] == 0.10
    assert run("check", APP, "--topology", str(topo)).exit_code == 0


def test_the_current_topology_is_priced_for_the_same_demand(files, tmp_path):
    topo = tmp_path / "now.toml"
    topo.write_text(
        '[pools.all]\nservices = ["default", "web", "indexer"]\n'
        'machine = "e2-highmem-4"\nreplicas = [1, 4]\n'
    )
    out = plan_json("--profile", files("p.json", SHOP), "--topology", str(topo))
    (pool,) = out["current"]
    m = load_catalog()["e2-highmem-4"]
    assert out["current_monthly_cost"] == pytest.approx(
        pool["replicas"] * m.price_per_hour * HOURS_PER_MONTH, abs=0.01
    )
    assert out["current_monthly_cost"] >= out["monthly_cost"]


def test_report_without_matplotlib_names_the_extra(files, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    result = run("plan", APP, "--profile", files("p.json", SHOP),
                 "--report", str(tmp_path / "r"))  # fmt: skip
    assert result.exit_code == 1
    assert "matplotlib" in result.output and "offload[plan]" in result.output


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("", "the file is empty"),
        ("{not json", "not JSON"),
        ({"tasks": [], "services": []}, "holds no runs"),
        (profile(row("build_index", "indexer", "indexing", 0.5, 4, 0.2, GIB, runs=0)),
         "holds no runs"),
        (profile(row("build_index", "indexer", "indexing", 0.0, 4, 0.2, GIB)),
         "'build_index' (service 'indexer'): 1000 run(s) but no rate"),
        ({"tasks": [{k: v for k, v in WEB.items() if k != "cpu_p90"}]}, "cpu_p90 is None"),
        ({"services": []}, '{"tasks": [...], "services": [...]}'),
        (profile(row("x", "billing", "web", 1.0, 1, 1, MIB)), "service 'billing'"),
    ],
)  # fmt: skip
def test_an_empty_or_thin_profile_is_a_clear_error_never_a_plan(files, content, expected):
    result = run("plan", APP, "--profile", files("p.json", content))
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    assert expected in lines[0]


def test_without_profile_the_broker_is_read(tmp_path, monkeypatch):
    """No --profile: app.profile() reads the broker; a fresh one has no runs to plan."""
    monkeypatch.chdir(tmp_path)  # the app's SQLite file lands here
    result = run("plan", APP)
    assert result.exit_code == 1
    assert "holds no runs" in result.output or "--profile FILE" in result.output


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (["--traffic", "-1"], "--traffic"),
        (["--traffic", "0"], "--traffic"),
        (["--traffic", "nan"], "--traffic"),
        (["--margin", "-5"], "--margin"),
        (["--margin", "500"], "--margin"),
        (["--catalog", "azure"], "--catalog"),
    ],
)
def test_bad_flags_are_usage_errors(files, flags, expected):
    result = run("plan", APP, "--profile", files("p.json", SHOP), *flags)
    assert result.exit_code == 2, result.output
    assert expected in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_a_catalog_file_without_prices_is_refused(files):
    bad = files("c.toml", '[machines.box]\ncpu = 2\nmemory = "8GiB"\n')
    result = run("plan", APP, "--profile", files("p.json", SHOP), "--catalog", bad)
    assert result.exit_code == 1
    assert "machines.box: price_per_hour is missing" in result.output


def test_a_task_no_shape_can_hold_is_refused(files):
    huge = profile(WEB, row("build_index", "indexer", "indexing", 0.5, 4, 0.2, 100 * GIB))
    result = run("plan", APP, "--profile", files("p.json", huge),
                 "--catalog", files("c.toml", CATALOG))  # fmt: skip
    assert result.exit_code == 1
    assert "service 'indexer'" in result.output and "larger shape" in result.output


def test_without_profile_the_planner_reads_what_workers_measured(tmp_path, monkeypatch):
    """End to end: a worker runs real tasks on a real broker, records them, and
    ``offload plan APP`` (no --profile) plans from ``app.profile()``."""
    import asyncio

    import tests.ops.opsapp as opsapp
    from offload.worker import Worker

    app = opsapp._make("shop", f"sqlite:///{tmp_path / 'broker.db'}")
    monkeypatch.setattr(opsapp, "measured_app", app, raising=False)
    try:
        for i in range(30):
            app.tasks["render_page"].send(i)
        for i in range(5):
            app.tasks["build_index"].send(i)
        asyncio.run(Worker(app, burst=True, concurrency=4).run())
        rows = {t.task: t for t in app.profile().tasks}
        assert rows["render_page"].runs == 30 and rows["render_page"].rate > 0
        out = plan_json(app="tests.ops.opsapp:measured_app")  # reads the broker
    finally:
        app.close()
    placed = sorted(s for p in out["pools"] for s in p["services"])
    assert placed == ["default", "indexer", "web"]
    demand = {d["service"]: d for d in out["demand"]}
    assert demand["web"]["rate"] == pytest.approx(rows["render_page"].rate)
    assert out["monthly_cost"] <= out["monolith_monthly_cost"]


def _demand(name, cores, slots, memory):
    from offload.planner import Demand

    return Demand(name, "thread", 1.0, cores, slots, memory, memory)


def test_services_sharing_a_queue_stay_in_one_pool():
    from offload.planner import plan

    shapes = [m for m in load_catalog().values() if m.provider == "gce"]
    demand = {"web": _demand("web", 2.5, 5, 20 * MIB), "idx": _demand("idx", 0.1, 2, 3 * GIB)}
    apart = plan(demand, shapes, queues={"web": {"a"}, "idx": {"b"}})
    shared = plan(demand, shapes, queues={"web": {"a"}, "idx": {"a"}})
    assert len(apart.pools) == 2
    assert [p.services for p in shared.pools] == [("idx", "web")]
    assert shared.monthly_cost == shared.monolith.monthly_cost


def test_past_the_exhaustive_limit_a_greedy_merge_still_plans():
    from offload.planner import EXHAUSTIVE_LIMIT, plan

    shapes = [m for m in load_catalog().values() if m.provider == "gce"]
    n = EXHAUSTIVE_LIMIT + 3
    demand = {
        f"s{i}": _demand(f"s{i}", 0.05 * (i + 1), 0.5, (64 if i % 2 else 2048) * MIB)
        for i in range(n)
    }
    result = plan(demand, shapes, queues={s: {s} for s in demand})
    assert sorted(s for p in result.pools for s in p.services) == sorted(demand)
    assert len(result.pools) < n  # tiny services were merged
    assert result.monthly_cost <= result.monolith.monthly_cost + 1e-6
