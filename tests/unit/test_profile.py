"""Measurements read back: histogram percentiles, rates, the profile rows, App.profile()
and ``offload profile`` after a real worker ran tasks."""

from __future__ import annotations

import asyncio
import json
import math
import random
import time

import pytest
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st

from offload import App, ConfigError, Retry, Worker
from offload.brokers.base import TaskMetrics
from offload.cli import main
from offload.profile import (
    HIGHEST,
    bucket,
    bucket_bounds,
    histogram,
    percentile,
    profile,
    rate,
)
from offload.worker.metrics import MetricsBuffer

# ---- histograms -----------------------------------------------------------------------------


def _hist(values: list[float], measure: str = "wall") -> dict[int | None, float]:
    buf = MetricsBuffer()
    for v in values:
        buf.add("t", v, 0.0, False)
    [m] = buf.take()
    return histogram(m.extra, measure)


def _nearest_rank(values: list[float], p: float) -> float:
    return sorted(values)[max(1, math.ceil(p * len(values))) - 1]


positive = st.floats(min_value=1e-9, max_value=1e9, allow_nan=False)


@given(positive)
def test_a_value_lies_in_its_bucket(v):
    lo, hi = bucket_bounds(bucket(v))
    # log() rounding may put a value sitting on a boundary one bucket low: within 1e-12
    assert lo <= v * (1 + 1e-12) and v < hi * (1 + 1e-12)
    assert hi / lo == pytest.approx(2**0.25)


@given(
    st.lists(st.one_of(positive, st.just(0.0)), min_size=1, max_size=300),
    st.sampled_from([0.01, 0.5, 0.9, 0.99, 1.0]),
)
def test_a_percentile_lies_in_the_bucket_of_the_exact_one(values, p):
    """Whatever the distribution, the estimate is in the bucket of the nearest-rank value:
    at most one bucket's width (19%) from it, zero exactly when it is zero."""
    got = percentile(_hist(values), p, max(values))
    exact = _nearest_rank(values, p)
    if exact == 0.0:
        assert got == 0.0
        return
    lo, hi = bucket_bounds(bucket(exact))
    assert lo * (1 - 1e-9) <= got <= hi * (1 + 1e-9), (got, exact)
    assert got <= max(values) * (1 + 1e-9)


@pytest.mark.parametrize(
    ("name", "draw"),
    [
        ("uniform 1ms..1s", lambda r: r.uniform(0.001, 1.0)),
        ("exponential mean 20ms", lambda r: r.expovariate(50.0)),
        ("lognormal", lambda r: r.lognormvariate(-3.0, 1.5)),
        ("bimodal", lambda r: r.choice([r.gauss(0.01, 0.001), r.gauss(2.0, 0.1)])),
    ],
)
def test_percentiles_of_known_distributions_are_within_ten_percent(name, draw):
    r = random.Random(7)
    values = [abs(draw(r)) for _ in range(20_000)]
    h = _hist(values)
    for p in (0.5, 0.9, 0.99):
        exact = _nearest_rank(values, p)
        got = percentile(h, p, max(values))
        assert abs(got / exact - 1) < 0.10, f"{name} p{p * 100:g}: {got} vs {exact}"


def test_percentile_edges():
    assert percentile({}, 0.5) == 0.0
    assert percentile({None: 3.0}, 0.9) == 0.0
    # three runs in one bucket: p90 capped by the exact maximum
    h = _hist([0.100, 0.101, 0.102])
    assert 0.100 * 0.95 < percentile(h, 0.9, 0.102) <= 0.102
    assert percentile(h, 1.0, 0.102) == 0.102  # the maximum is exact
    for bad in (0, -0.5, 1.5, math.nan):
        with pytest.raises(ConfigError, match="more than 0 and at most 1"):
            percentile(h, bad)


def test_histogram_skips_keys_it_cannot_read():
    extra = {"h.wall.-10": 2.0, "h.wall.z": 1.0, "h.wall.x": 5.0, "h.cpu.3": 1.0, "expired": 4}
    assert histogram(extra, "wall") == {-10: 2.0, None: 1.0}


# ---- the buffer -----------------------------------------------------------------------------


def test_buffer_keeps_the_old_signature_and_adds_rss():
    buf = MetricsBuffer()
    buf.add("a", 0.5, 0.25, failed=False)  # as the worker has always called it
    buf.add("a", 0.5, 0.0, True, rss=0)  # a thread task whose worker did not grow
    buf.add("a", 1.0, 0.5, False, rss=50 * 2**20)
    buf.count("a", "expired")
    [m] = buf.take()
    assert (m.count, m.failures, m.wall_max, m.cpu_max) == (3, 1, 1.0, 0.5)
    assert m.mem_peak_max == 50 * 2**20
    assert m.extra["expired"] == 1.0
    assert histogram(m.extra, "wall") == {bucket(0.5): 2.0, bucket(1.0): 1.0}
    assert histogram(m.extra, "cpu") == {None: 1.0, bucket(0.25): 1.0, bucket(0.5): 1.0}
    # rss: the run without a reading is not counted; zero has its own bucket
    assert histogram(m.extra, "rss") == {None: 1.0, bucket(50 * 2**20): 1.0}
    assert buf.take() == []


def test_buffer_clamps_absurd_values_to_bounded_keys():
    buf = MetricsBuffer()
    for v in (math.inf, 1e308, -1.0, math.nan, 1e-300):
        buf.add("a", v, 0.0, False)
    [m] = buf.take()
    keys = {k for k in m.extra if k.startswith("h.wall.")}
    assert keys == {f"h.wall.{HIGHEST}", "h.wall.z", "h.wall.-200"}


def test_buffer_add_stays_cheap():
    """Per task at tens of thousands a second: a few microseconds at most, even on a
    loaded machine (it is ~0.5 us)."""
    buf = MetricsBuffer()
    start = time.perf_counter()
    for i in range(20_000):
        buf.add("a", 0.001 + i * 1e-7, 0.0005, False, rss=4096)
    assert (time.perf_counter() - start) / 20_000 < 10e-6


# ---- rates ----------------------------------------------------------------------------------

NOW = 1_800_000_000.0 + 30.0  # 30 s into a minute
MIN = int(NOW // 60)


def test_rate_over_a_full_hour():
    recent = {MIN - k: 60 for k in range(0, 100)}  # a run a second for 100 minutes
    span = NOW - (MIN - 59) * 60
    assert rate(recent, NOW) == pytest.approx(60 * 60 / span)
    assert rate(recent, NOW) == pytest.approx(1.0, rel=0.01)


def test_rate_of_a_task_that_started_within_the_hour_is_over_what_was_observed():
    recent = {MIN - k: 120 for k in range(0, 10)}  # two a second since ten minutes ago
    assert rate(recent, NOW) == pytest.approx(1200 / (NOW - (MIN - 9) * 60))
    # one that ran well before the hour and again now: the hour is the span
    assert rate({MIN - 90: 5, MIN: 36}, NOW) == pytest.approx(36 / (NOW - (MIN - 59) * 60))
    # a first burst just now: at least a minute
    assert rate({MIN: 30}, NOW) == pytest.approx(0.5)


def test_rate_ignores_minutes_out_of_the_window():
    assert rate({}, NOW) == 0.0
    assert rate({MIN - 180: 1000}, NOW) == 0.0
    assert rate({MIN - 100: 1000}, NOW) == 0.0  # kept, but older than the hour


# ---- profile rows ---------------------------------------------------------------------------


@pytest.fixture
def shop(tmp_path):
    app = App("prof", broker=f"sqlite:///{tmp_path / 'b.db'}")
    app.queue("fast", retry=Retry(limit=0))  # a failure is final: a burst ends at once
    app.queue("heavy")
    mail = app.service("mail")
    big = app.service("reports", executor="process", memory_limit="1GiB")

    @mail.task(queue="fast", name="mail.send")
    def send(n: int) -> None:
        if n < 0:
            raise ValueError("negative")
        time.sleep(0.002 * (n % 5))

    @big.task(queue="heavy", name="reports.build")
    def build() -> None:  # pragma: no cover - no worker serves "heavy" here
        pass

    @app.task(queue="fast", name="plain.echo")
    async def echo(x: int) -> int:
        return x

    yield app
    app.close()


def test_profile_rows_from_metrics(shop):
    buf = MetricsBuffer()
    for i in range(10):
        buf.add("mail.send", 0.01 * (i + 1), 0.001, i == 9, rss=1000 * (i + 1))
    [m] = buf.take()
    m.recent = {MIN: 10}
    other = TaskMetrics("not.mine", 99)  # another app's: left out
    p = profile(shop, [m, other], NOW)
    d = p.to_dict()
    assert set(d) == {"tasks", "services"}
    assert [t["task"] for t in d["tasks"]] == ["mail.send", "offload.push", "plain.echo",
                                               "reports.build"]  # fmt: skip
    send = p.task("mail.send")
    assert (send.service, send.queue, send.runs, send.failures) == ("mail", "fast", 10, 1)
    assert send.rate == pytest.approx(10 / 60)
    assert send.wall_p50 == pytest.approx(0.05, rel=0.19)
    assert send.wall_p90 == pytest.approx(0.09, rel=0.19)
    assert send.rss_peak_p90 == pytest.approx(9000, rel=0.19)
    assert send.rss_peak_max == 10_000 and send.rss_runs == 10
    assert send.rss_exact is False  # a thread service: the worker's growth, approximate
    for key in ("task", "service", "queue", "runs", "failures", "rate", "wall_p50", "wall_p90",
                "cpu_p50", "cpu_p90", "rss_peak_p50", "rss_peak_p90", "rss_peak_max"):  # fmt: skip
        assert key in d["tasks"][0], key
    # a task that never ran: a row of zeros, not an error
    build = p.task("reports.build")
    assert (build.runs, build.rate, build.wall_p90, build.rss_peak_max) == (0, 0.0, 0.0, 0)
    assert build.rss_exact is True
    services = {s["service"]: s for s in d["services"]}
    assert set(services) == {"default", "mail", "reports"}
    assert services["reports"] == {
        "service": "reports",
        "executor": "process",
        "memory_limit": 2**30,
        "tasks": 1,
        "runs": 0,
        "failures": 0,
        "rate": 0.0,
        "rss_exact": True,
    }
    assert services["mail"]["runs"] == 10 and services["mail"]["rate"] == send.rate
    assert services["default"]["tasks"] == 2  # plain.echo and the built-in offload.push
    json.dumps(d, allow_nan=False)  # strict JSON as it is


def test_profile_refuses_a_bad_clock_and_names_unknown_rows(shop):
    for bad in (math.nan, "now", None):
        with pytest.raises(ConfigError, match="broker's clock"):
            profile(shop, [], bad)
    p = profile(shop, [], NOW)
    with pytest.raises(KeyError, match=r"no task function 'nope'.*mail\.send"):
        p.task("nope")
    with pytest.raises(KeyError, match=r"no service 'nope'.*reports"):
        p.service("nope")


def test_app_profile_before_any_run_is_zeros(shop):
    p = shop.profile()
    assert {s.service: s.runs for s in p.services} == {"default": 0, "mail": 0, "reports": 0}
    assert all(t.runs == 0 and t.wall_p50 == 0.0 for t in p.tasks)


def test_app_profile_after_a_real_worker(shop):
    shop.get_task("mail.send").send_many([((i,), {}) for i in range(-2, 38)])
    shop.get_task("plain.echo").send(1)
    stats = asyncio.run(Worker(shop, queues=["fast"], burst=True).run())
    assert (stats.succeeded, stats.dead) == (39, 2)
    p = shop.profile()
    send = p.task("mail.send")
    assert send.runs == 40 and send.failures == 2
    # sleeps of 0, 2, 4, 6 and 8 ms: p90 about 8 ms, p50 about 4 ms (more on a busy machine)
    assert 0.006 < send.wall_p90 < 2.0, send
    assert 0.002 < send.wall_p50 < send.wall_p90, send
    assert 0.0 < send.rate <= 40 / 60 + 1e-9  # all in this minute: 40 over at least 60 s
    assert p.task("plain.echo").runs == 1
    assert p.service("mail").runs == 40 and p.service("reports").runs == 0
    assert p.service("default").runs == 1


# ---- the command ----------------------------------------------------------------------------

app = None  # set by the cli fixture: `offload profile tests.unit.test_profile:app`
SPEC = "tests.unit.test_profile:app"


@pytest.fixture
def cli(shop):
    global app
    app = shop
    runner = CliRunner()
    yield lambda *args: runner.invoke(main, list(args), catch_exceptions=False)
    app = None


def test_offload_profile_json_after_a_real_worker(cli, shop):
    shop.get_task("mail.send").send_many([((i,), {}) for i in range(20)])
    asyncio.run(Worker(shop, queues=["fast"], burst=True).run())
    r = cli("profile", SPEC, "--json")
    assert r.exit_code == 0, r.output
    got = json.loads(r.output)
    assert got == json.loads(json.dumps(shop.profile().to_dict()))  # the same data
    rows = {t["task"]: t for t in got["tasks"]}
    assert rows["mail.send"]["runs"] == 20 and rows["mail.send"]["wall_p90"] > 0
    assert rows["reports.build"]["runs"] == 0
    assert {s["service"]: s["runs"] for s in got["services"]}["mail"] == 20


def test_offload_profile_tables(cli, shop):
    shop.get_task("mail.send").send(3)
    asyncio.run(Worker(shop, queues=["fast"], burst=True).run())
    r = cli("profile", SPEC)
    assert r.exit_code == 0, r.output
    assert "mail.send" in r.output and "reports.build" in r.output
    assert "~approx." in r.output and "exact" in r.output and "1GiB" in r.output
    assert "…" not in r.output  # 80 columns: folded where it must be, nothing cut


def test_offload_profile_bad_input(cli):
    r = cli("profile", "tests.unit.test_profile:nope")
    assert r.exit_code == 1 and "has no attribute 'nope'" in r.output
    r = cli("profile", "not a spec")
    assert r.exit_code == 1 and "expected MODULE:APP" in r.output
    r = cli("profile")
    assert r.exit_code == 2 and "Missing argument" in r.output
    r = cli("profile", SPEC, "--csv")
    assert r.exit_code == 2 and "--csv" in r.output
