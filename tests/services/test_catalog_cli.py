"""The machine catalog, and the pool commands: offload machines, check, worker --pool."""

from __future__ import annotations

import datetime as dt
import json
import os
import pathlib
import re
import subprocess
import sys

import pytest

from offload.catalog import load_catalog, providers
from offload.core.policy import DEFAULT_CONCURRENCY

HERE = pathlib.Path(__file__).parent
ROOT = HERE.parents[1]
APP = "tests.services.splitapp:app"
TOPOLOGY = str(HERE / "split.toml")


def test_the_catalog_loads_with_positive_prices_and_its_sources():
    shapes = load_catalog()
    assert {"e2-standard-2", "e2-highmem-2", "n2-highmem-4", "t3.large", "r6i.large"} <= set(shapes)
    assert {m.provider for m in shapes.values()} == {"gce", "aws"}
    for m in shapes.values():
        assert m.price_per_hour is not None and m.price_per_hour > 0, m
        assert m.cpu > 0 and m.memory >= 2**30, m
    e2 = shapes["e2-highmem-2"]
    assert (e2.cpu, e2.memory) == (2.0, 16 * 2**30)
    # a high-memory shape costs more than the standard one of the same vCPUs, less than two
    ratio = e2.price_per_hour / shapes["e2-standard-2"].price_per_hour
    assert 1 < ratio < 2
    for p in providers().values():
        assert p.region and p.currency == "USD" and p.source
        dt.date.fromisoformat(p.prices_as_of)
    assert providers()["gce"].region == "us-central1" and providers()["aws"].region == "us-east-1"


def run(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "offload", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, **env},
        timeout=60,
    )


@pytest.fixture
def env(tmp_path):
    return {
        "OFFLOAD_BROKER": f"sqlite:///{tmp_path / 'b.db'}",
        "SPLIT_SINK": str(tmp_path / "sink"),
        "OFFLOAD_TOPOLOGY": "",
    }


def test_offload_machines_lists_the_catalog():
    r = run("machines", "--json")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    names = [m["name"] for m in data["machines"]]
    assert names == list(load_catalog()) and all(m["price_per_hour"] > 0 for m in data["machines"])
    assert data["providers"]["gce"]["prices_as_of"] == providers()["gce"].prices_as_of
    r = run("machines")
    assert r.returncode == 0 and "e2-highmem-2" in r.stdout and "prices as of" in r.stdout


def test_offload_check_prints_the_placement(env):
    r = run("check", APP, "--topology", TOPOLOGY, **env)
    assert r.returncode == 0, r.stderr
    assert "pool web: e2-standard-2 (2 vCPU, 8GiB" in r.stdout
    assert "pool highmem: e2-highmem-2 (2 vCPU, 16GiB" in r.stdout
    assert "orders" in r.stdout and "  queues: indexing\n" in r.stdout
    r = run("check", APP, "--json", **{**env, "OFFLOAD_TOPOLOGY": TOPOLOGY})
    pools = {p["pool"]: p for p in json.loads(r.stdout)["pools"]}
    assert pools["highmem"]["services"][0]["tasks"] == ["build_index"]
    assert pools["web"]["replicas"] == [1, 4] and pools["web"]["concurrency"] == 4
    assert "orders" in pools["web"]["queues"] and pools["highmem"]["queues"] == ["indexing"]
    r = run("check", APP, **env)  # no topology: the monolith
    assert r.returncode == 0 and "pool all: any machine" in r.stdout


def one_error_line(r: subprocess.CompletedProcess[str], code: int = 1) -> str:
    lines = r.stderr.strip().splitlines()
    assert r.returncode == code and len(lines) == 1, (r.returncode, r.stderr)
    assert lines[0].startswith("Error: "), lines
    return lines[0]


def test_a_bad_topology_is_one_line_from_every_command(env, tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[pools.web]\nservices = ["default", "indexr"]\nmachine = "e2-standard-2"\n')
    for args in (
        ("check", APP, "--topology", str(bad)),
        ("worker", APP, "--pool", "web", "--topology", str(bad)),
        ("run", APP, "--topology", str(bad)),
    ):
        line = one_error_line(run(*args, **env))
        assert line.startswith(f"Error: {bad}:2: pools.web.services: unknown service 'indexr'")


@pytest.mark.parametrize(
    ("args", "code", "needle"),
    [
        (("--pool", "nope", "--topology", TOPOLOGY), 1, "pool 'nope' is not declared"),
        (("--pool", "web"), 1, "no topology (one pool 'all')"),
        (("--pool", "web", "--queues", "orders", "--topology", TOPOLOGY), 2, "not both"),
        (("--topology", TOPOLOGY), 2, "--topology needs --pool"),
    ],
)
def test_worker_pool_refusals(env, args, code, needle):
    assert needle in one_error_line(run("worker", APP, *args, **env), code)


def test_worker_pool_serves_its_queues_with_its_concurrency(env):
    r = run("worker", APP, "--pool", "web", "--topology", TOPOLOGY, "--burst", **env)
    assert r.returncode == 0, r.stderr
    assert re.search(r"queues: (default, )?orders, concurrency 4\n", r.stderr), r.stderr
    env = {**env, "OFFLOAD_TOPOLOGY": TOPOLOGY}
    r = run("worker", APP, "--pool", "highmem", "-c", "9", "--burst", **env)
    assert r.returncode == 0 and "queues: indexing, concurrency 9" in r.stderr, r.stderr
    r = run("worker", APP, "--pool", "all", "--burst", **{**env, "OFFLOAD_TOPOLOGY": ""})
    assert f"queues: default, indexing, orders, concurrency {DEFAULT_CONCURRENCY}" in r.stderr, (
        r.stderr
    )  # all


def test_a_process_executor_pool_runs_its_tasks_in_child_processes(env, tmp_path):
    env = {**env, "SPLIT_EXECUTOR": "process"}
    r = run("check", APP, "--topology", TOPOLOGY, **env)
    assert r.returncode == 0, r.stderr
    r = run("send", APP, "build_index", "--args", "[3]", **env)
    assert r.returncode == 0, r.stderr
    r = run("worker", APP, "--pool", "highmem", "--topology", TOPOLOGY, "--burst", **env)
    assert r.returncode == 0, r.stderr
    lines = (tmp_path / "sink").read_text().split()
    assert lines[:3] == ["index", "3", "1"] and lines[4] == "indexing", lines
    assert int(lines[3]) != os.getpid()  # a child of the worker's, not this process
    # the pool without it runs as ever
    r = run("worker", APP, "--pool", "web", "--topology", TOPOLOGY, "--burst", **env)
    assert r.returncode == 0, r.stderr
