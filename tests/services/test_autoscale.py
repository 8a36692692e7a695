"""Autoscaling: the pure decision rules (offload.autoscale), the topology keys that steer
them, the signals an outside autoscaler reads (``offload queues``, ``/metrics``), and
``offload run --autoscale`` on real brokers: a burst wakes a min-0 pool, takes it to its
max, and it drains back to min with no task lost."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families
from starlette.testclient import TestClient

from offload import App
from offload.autoscale import (
    DEFAULT_CONCURRENCY,
    ScalePolicy,
    ScaleState,
    Signals,
    decide,
    pool_signals,
    queue_signals,
    workers_needed,
)
from offload.http import create_app
from offload.topology import TopologyError, load_topology

from . import scaling
from .scaling import APP, ROOT

scale_run = scaling.scale_run  # the fixture

P = ScalePolicy(minimum=1, maximum=6, concurrency=4, target_latency=2.0, cooldown=10.0)
IDLE = Signals()


# -- the decision rules -------------------------------------------------------------------


def test_scales_up_on_latency_by_what_the_work_needs():
    d = decide(P, Signals(ready=3, in_flight=1, oldest_ready_age=2.5), workers=1, now=0)
    assert (d.workers, d.target) == (1, 2)  # one more: (1 + 3) / 4 -> 1, at least +1
    assert "oldest ready task waited 2.5s > target 2.0s" in d.reason
    d = decide(P, Signals(ready=20, in_flight=4, oldest_ready_age=3.0), workers=1, now=0)
    assert d.target == 5  # ceil(24 / 4) = 6, but at most max(4, 1) = 4 more at once


def test_scales_up_when_every_slot_is_busy_and_work_waits():
    d = decide(P, Signals(ready=1, in_flight=8, oldest_ready_age=0.1), workers=2, now=0)
    assert d.target == 3 and "every slot is busy" in d.reason
    # busy but nothing waits: the pool keeps up exactly, no more workers
    assert decide(P, Signals(ready=0, in_flight=8), workers=2, now=0).change == 0


def test_a_min_zero_pool_wakes_on_its_first_task_and_sleeps_without_one():
    p0 = ScalePolicy(minimum=0, maximum=3, concurrency=4)
    assert decide(p0, IDLE, workers=0, now=0).change == 0
    d = decide(p0, Signals(ready=1, oldest_ready_age=0.0), workers=0, now=0)
    assert d.target == 1 and "no worker" in d.reason
    assert decide(p0, Signals(ready=100, oldest_ready_age=0.0), workers=0, now=0).target == 3


def test_starting_workers_hold_a_latency_scale_up_but_not_a_bigger_demand():
    late = Signals(ready=2, in_flight=4, oldest_ready_age=5.0)
    assert decide(P, late, workers=2, now=0, starting=1).change == 0
    bigger = Signals(ready=40, in_flight=8, oldest_ready_age=5.0)
    assert decide(P, bigger, workers=2, now=0, starting=1).target == 6


def test_between_the_thresholds_nothing_changes():
    # waited more than half the target but not the target: neither up nor spare
    s = Signals(ready=1, in_flight=0, oldest_ready_age=1.5)
    state = ScaleState()
    for t in range(0, 100, 5):
        d = decide(P, s, workers=3, now=t, state=state)
        state = d.state
        assert d.change == 0


def test_scales_down_only_after_a_cooldown_of_spare_capacity_and_by_halves():
    state = ScaleState(changed_at=0.0)
    workers, t, seen = 6, 0.0, []
    while t < 200:
        d = decide(P, IDLE, workers, t, state)
        state = d.state
        if d.change:
            seen.append((t, d.workers, d.target))
            workers = d.target
        t += 1
    assert seen == [(10, 6, 3), (20, 3, 2), (30, 2, 1)]  # never below min 1
    # spare capacity broken by a busy moment starts the count again
    state = ScaleState()
    assert decide(P, IDLE, 4, 0, state).change == 0
    state = decide(P, IDLE, 4, 0, state).state
    state = decide(P, Signals(in_flight=16), 4, 5, state).state  # all 4 workers busy
    assert decide(P, IDLE, 4, 12, state).change == 0  # only 7 s of spare since
    assert decide(P, IDLE, 4, 12, state).state.spare_since == 12


def test_scales_down_no_lower_than_the_work_in_flight_needs():
    d = decide(P, Signals(in_flight=9), 6, 100, ScaleState(spare_since=0.0))
    assert d.target == 3  # ceil(9 / 4)


def test_out_of_range_counts_are_brought_back_first():
    assert decide(P, IDLE, 0, 0).target == 1
    assert decide(P, Signals(ready=100, oldest_ready_age=9.0), 9, 0).target == 6


def test_signals_from_broker_counts():
    assert queue_signals(3, 2, 100.0, 101.5) == Signals(3, 2, 1.5)
    assert queue_signals(0, 0, None, 5.0).oldest_ready_age is None
    assert queue_signals(1, 0, 10.0, 9.0).oldest_ready_age == 0.0  # clocks never go back
    pooled = pool_signals([Signals(1, 2, 0.5), Signals(3, 4, None), Signals(0, 1, 2.0)])
    assert pooled == Signals(4, 7, 2.0)
    assert pool_signals([]) == IDLE
    assert workers_needed(Signals(ready=10, in_flight=3), P) == 4
    assert workers_needed(IDLE, P) == 1 and workers_needed(Signals(ready=999), P) == 6


def test_a_policy_refuses_impossible_bounds():
    for bad in (
        {"minimum": 3, "maximum": 2},
        {"maximum": 0},
        {"concurrency": 0},
        {"target_latency": 0.0},
        {"target_latency": math.inf},
        {"cooldown": -1.0},
    ):
        with pytest.raises(ValueError):
            ScalePolicy(**{"minimum": 0, "maximum": 2, "concurrency": 1, **bad})


policies = st.builds(
    lambda lo, extra, conc, target, cool, step: ScalePolicy(
        lo, max(1, lo + extra), conc, target, cool, step
    ),
    st.integers(0, 5),
    st.integers(0, 8),
    st.integers(1, 16),
    st.floats(0.05, 10),
    st.floats(0, 30),
    st.integers(1, 6),
)
signals = st.builds(
    Signals,
    st.integers(0, 500),
    st.integers(0, 200),
    st.one_of(st.none(), st.floats(0, 60)),
)


@settings(max_examples=300, deadline=None)
@given(policies, st.lists(st.tuples(st.floats(0, 20), signals, st.integers(0, 3)), max_size=40))
def test_any_history_stays_in_bounds_and_never_scales_down_within_the_cooldown(policy, steps):
    workers, now, state = policy.minimum, 0.0, ScaleState()
    last_change: float | None = None
    spare_from: float | None = None
    for dt, sig, starting in steps:
        now += dt
        d = decide(policy, sig, workers, now, state, starting=min(starting, workers))
        assert policy.minimum <= d.target <= policy.maximum
        spare = (
            workers > policy.minimum
            and (sig.oldest_ready_age is None or sig.oldest_ready_age <= policy.target_latency / 2)
            and sig.in_flight + sig.ready <= (workers - 1) * policy.concurrency
        )
        spare_from = (spare_from if spare_from is not None else now) if spare else None
        if d.change < 0:
            assert spare_from is not None and now - spare_from >= policy.cooldown
            assert last_change is None or now - last_change >= policy.cooldown
            assert d.target >= math.ceil(sig.in_flight / policy.concurrency)
        if d.change > 0:
            assert d.change <= max(policy.step_up, workers)
            assert sig.waiting
        if d.change:
            last_change = now
            spare_from = now if d.change < 0 else None
            workers = d.target
        state = d.state


@settings(max_examples=200, deadline=None)
@given(policies, st.integers(0, 8), st.integers(0, 500), st.floats(0, 60))
def test_late_work_always_adds_a_worker_below_the_max(policy, workers, ready, age):
    workers = min(max(workers, policy.minimum), policy.maximum)
    sig = Signals(ready=ready + 1, in_flight=0, oldest_ready_age=policy.target_latency + age + 0.01)
    d = decide(policy, sig, workers, 0.0)
    assert d.target == policy.maximum or d.target > workers
    assert d.target > workers or workers == policy.maximum


# -- the topology keys ------------------------------------------------------------------------

BASE = '[pools.web]\nservices = ["default"]\nmachine = "t3.large"\nreplicas = [0, 3]\n'


def test_topology_keys_default_and_parse(tmp_path):
    f = tmp_path / "t.toml"
    f.write_text(BASE)
    web = load_topology(str(f)).pools["web"]
    assert (web.target_latency, web.cooldown) == (2.0, 60.0)
    f.write_text(BASE + "target_latency = 0.25\ncooldown = 0\n")
    web = load_topology(str(f)).pools["web"]
    assert (web.target_latency, web.cooldown) == (0.25, 0.0)
    assert ScalePolicy.for_pool(web).concurrency == DEFAULT_CONCURRENCY  # the worker's default


@pytest.mark.parametrize(
    "line, message",
    [
        ("target_latency = 0", "pools.web.target_latency: 0 must be a number > 0"),
        ('target_latency = "2s"', "pools.web.target_latency: '2s' must be a number > 0"),
        ("target_latency = nan", "pools.web.target_latency: nan must be a number > 0"),
        ("cooldown = -5", "pools.web.cooldown: -5 must be a number >= 0"),
        ("cooldown = true", "pools.web.cooldown: True must be a number >= 0"),
    ],
)
def test_bad_topology_keys_are_one_line_naming_file_line_and_field(tmp_path, line, message):
    f = tmp_path / "t.toml"
    f.write_text(BASE + "concurrency = 4\n" + line + "\n")
    with pytest.raises(TopologyError) as e:
        load_topology(str(f))
    assert str(e.value) == f"{f}:6: {message}"


# -- the signals an outside autoscaler reads ---------------------------------------------


def test_queues_json_and_pools_carry_the_signals(scale_run, tmp_path):
    r = scale_run("redis")
    topo = r.topology(BASE.replace("t3.large", "e2-standard-2") + "concurrency = 4\n")
    r.mod.step.send_many([((n,), {}) for n in range(10)])
    time.sleep(0.3)

    def cli(*args: str) -> object:
        p = subprocess.run(
            [sys.executable, "-m", "offload", *args],
            cwd=ROOT,
            env=r.env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert p.returncode == 0, p.stderr
        return p.stdout

    rows = {q["queue"]: q for q in json.loads(cli("queues", APP, "--json"))}
    work = rows["work"]
    assert (work["ready"], work["in_flight"]) == (10, 0)
    assert 0.25 <= work["oldest_ready_age"] < 30
    assert rows["default"]["oldest_ready_age"] is None
    [pool] = json.loads(cli("queues", APP, "--pools", "--topology", topo, "--json"))
    assert pool["pool"] == "web" and pool["queues"] == ["default", "work"]
    assert (pool["ready"], pool["in_flight"], pool["concurrency"]) == (10, 0, 4)
    assert pool["replicas"] == [0, 3] and pool["target_latency"] == 2.0
    assert pool["workers_needed"] == 3  # ceil(10 / 4)
    assert pool["oldest_ready_age"] >= 0.25
    text = cli("queues", APP, "--pools", "--topology", topo)
    assert "pool web: 10 ready, oldest waited" in text and "3 worker(s) needed of 0-3" in text


def test_metrics_have_the_per_pool_signals(broker_url, tmp_path):
    topo = tmp_path / "t.toml"
    topo.write_text(
        BASE.replace("t3.large", "e2-standard-2")
        + 'concurrency = 2\ntarget_latency = 0.5\n[pools.side]\nservices = ["side"]\n'
        'machine = "e2-standard-2"\n'
    )
    app = App("metricscale", broker=broker_url, topology=str(topo))
    app.queue("work")
    app.queue("other")
    side = app.service("side")

    @app.task(queue="work", name="w")
    def w() -> None: ...

    @side.task(queue="other", name="o")
    def o() -> None: ...

    w.send_many([((), {})] * 5)
    with TestClient(create_app(app, no_auth=True, parts=("metrics",))) as c:
        text = c.get("/metrics").text
    got = {
        (s.name, s.labels.get("pool")): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
        if s.name.startswith("offload_pool_")
    }
    assert got[("offload_pool_ready", "web")] == 5
    assert got[("offload_pool_in_flight", "web")] == 0
    assert got[("offload_pool_concurrency", "web")] == 2
    assert got[("offload_pool_replicas_min", "web")] == 0
    assert got[("offload_pool_replicas_max", "web")] == 3
    assert got[("offload_pool_target_latency_seconds", "web")] == 0.5
    assert got[("offload_pool_workers_needed", "web")] == 3
    assert got[("offload_pool_oldest_ready_age_seconds", "web")] >= 0
    assert got[("offload_pool_ready", "side")] == 0
    assert got[("offload_pool_workers_needed", "side")] == 1  # its min
    app.close()


# -- offload run --autoscale on real brokers --------------------------------------------------

BURST = 600  # tasks of 50 ms: 2.5 s for 3 workers of 4 slots, 7.5 s for one


@pytest.mark.slow
@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", ["redis", "postgres"])
def test_a_burst_wakes_a_min_zero_pool_takes_it_to_max_and_it_drains_back(scale_run, kind):
    r = scale_run(kind)
    topo = r.topology(
        '[pools.burst]\nservices = ["default"]\nmachine = "e2-standard-2"\n'
        "replicas = [0, 3]\nconcurrency = 4\ntarget_latency = 0.5\ncooldown = 1\n"
    )
    sup = r.start("run", APP, "--topology", topo, "--autoscale", "--grace", "5")
    r.wait_for(lambda: r.log(r"autoscale burst: 0-3 worker"), 20, "the supervisor started")
    time.sleep(1.0)
    assert not r.log(r"started burst\."), "an idle min-0 pool started a worker"

    t0 = time.monotonic()
    r.mod.step.send_many([((n, 0.05), {}) for n in range(BURST)])
    r.wait_for(lambda: r.log(r"started burst\.1 "), 5, "the first worker started")
    woke = r.log(r"started burst\.1 ")[0][0] - t0
    assert woke < 2.0, f"the first worker started {woke:.2f}s after the burst"
    r.wait_for(lambda: r.ran(), 10, "the first task ran")
    r.wait_for(lambda: r.log(r"autoscale burst: \d+→3 workers"), 10, "the pool at its max")
    r.wait_for(lambda: len(r.ran()) == BURST, 30, "every task ran")
    assert len({pid for pid, _ in r.ran().values()}) == 3  # three workers took part
    r.wait_for(lambda: r.log(r"autoscale burst: 1→0 workers"), 15, "drained back to min 0")
    r.wait_for(lambda: len(r.log(r"burst\.\d drained and stopped")) == 3, 15, "all drained")

    decisions = [
        (int(a), int(b))
        for _, m in r.log(r"autoscale burst: (\d+)→(\d+) workers: ")
        for a, b in [m.groups()]
    ]
    assert all(0 <= b <= 3 for _, b in decisions), decisions
    assert decisions[0][0] == 0 and decisions[-1] == (1, 0), decisions
    peak = next(i for i, (_, b) in enumerate(decisions) if b == 3)
    assert all(b < a for a, b in decisions[peak + 1 :]), decisions  # then only down
    for _, m in r.log(r"autoscale burst: \d+→\d+ workers: (.+)$"):
        assert m.group(1).strip(), "a decision without its reason"

    assert sorted(r.ran()) == list(range(BURST))  # no task lost
    st_ = r.app.stats("work")
    assert (st_.ready, st_.leased, st_.dead) == (0, 0, 0)
    sup.send_signal(signal.SIGTERM)
    assert sup.wait(20) == 0


def test_autoscale_without_a_topology_is_a_usage_error(tmp_path):
    env = {**os.environ, "OFFLOAD_TOPOLOGY": "", "OFFLOAD_BROKER": f"sqlite:///{tmp_path}/b.db"}
    p = subprocess.run(
        [sys.executable, "-m", "offload", "run", APP, "--autoscale"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 2
    assert p.stderr.startswith("Error: --autoscale scales the pools of a topology; give --topology")


def test_workers_the_queues_max_concurrent_cannot_fill_are_never_started():
    """A pool whose only queue runs at most 2 at once, 2 per worker: a second worker would
    sit idle however late the work is (found by the story: `indexing`, max_concurrent=2)."""
    from offload.autoscale import in_flight_cap

    assert in_flight_cap([2, 3]) == 5 and in_flight_cap([2, None]) is None
    assert in_flight_cap([]) is None
    policy = ScalePolicy(0, 3, 2, target_latency=1.0, cooldown=10.0, max_in_flight=2)
    assert policy.useful_maximum == 1
    busy = Signals(ready=18, in_flight=2, oldest_ready_age=5.0)
    d = decide(policy, busy, workers=1, now=100.0)
    assert d.target == 1 and "max_concurrent" in d.reason, d
    assert workers_needed(busy, policy) == 1
    # work arriving at an idle pool still starts its first worker
    assert decide(policy, busy, workers=0, now=100.0).target == 1
    # without the cap the same signals scale up
    free = ScalePolicy(0, 3, 2, target_latency=1.0, cooldown=10.0)
    assert decide(free, busy, workers=1, now=100.0).target > 1


def test_the_worker_the_cli_and_the_autoscaler_share_one_default_concurrency():
    """The autoscaler sizes a pool by the slots a worker started without -c really has:
    the Worker's default and the CLI's are the one constant (64, chosen by measurement)."""
    import inspect

    from click.testing import CliRunner

    from offload.cli import main
    from offload.worker import Worker

    assert DEFAULT_CONCURRENCY == 64
    assert inspect.signature(Worker).parameters["concurrency"].default == DEFAULT_CONCURRENCY
    help_text = CliRunner().invoke(main, ["worker", "--help"]).output
    assert f"else {DEFAULT_CONCURRENCY}]" in " ".join(help_text.split())
