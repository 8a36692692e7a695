"""Measurements through every broker: the workers' histograms and run counts per minute
summed across workers, read back the same everywhere, and run counts older than two hours
dropped so that storage stays bounded."""

from __future__ import annotations

import asyncio
import importlib
import json
import math
import random
import sqlite3
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import pytest
from click.testing import CliRunner

from offload import Worker
from offload.brokers import broker_from_url
from offload.brokers.base import TaskMetrics
from offload.cli import main
from offload.profile import bucket, bucket_bounds, histogram, percentile, rate
from offload.worker.metrics import MetricsBuffer
from tests.conftest import _param

MiB = 1024 * 1024


@pytest.fixture
async def brokers(broker_url):
    """Two instances on one namespace: two workers."""
    opened = [broker_from_url(broker_url), broker_from_url(broker_url)]
    for b in opened:
        await b.open()
    yield opened
    for b in opened:
        await b.close()


def _hist_keys(m: TaskMetrics) -> dict[str, float]:
    return {k: v for k, v in m.extra.items() if k.startswith("h.")}


async def _read(b, task: str) -> TaskMetrics:
    got = [m for m in await b.metrics() if m.task == task]
    assert len(got) == 1, f"metrics() has {len(got)} rows for {task}"
    return got[0]


async def test_two_workers_flushes_sum_into_one_histogram(brokers):
    a, b = brokers
    r = random.Random(3)
    everything = MetricsBuffer()  # what one buffer seeing every run would hold
    samples: list[float] = []
    worker_a, worker_b = MetricsBuffer(), MetricsBuffer()
    for buf, broker in ((worker_a, a), (worker_b, b), (worker_a, a)):
        for i in range(400):
            wall = r.lognormvariate(-4.0, 1.0)
            rss = None if i % 4 == 0 else int(wall * 1e9)
            samples.append(wall)
            for x in (buf, everything):
                x.add("m.fn", wall, wall / 3, i % 10 == 0, rss=rss)
        await buf.flush(broker)
    [want] = everything.take()
    minute = int(await a.now() // 60)
    for broker in (a, b):
        m = await _read(broker, "m.fn")
        assert (m.count, m.failures) == (1200, 120)
        assert m.mem_peak_max == want.mem_peak_max
        assert math.isclose(m.wall_max, max(samples))
        assert _hist_keys(m) == _hist_keys(want)  # every bucket summed exactly
        exact = sorted(samples)[int(0.9 * len(samples)) - 1]
        p90 = percentile(histogram(m.extra, "wall"), 0.9, m.wall_max)
        lo, hi = bucket_bounds(bucket(exact))
        assert lo <= p90 <= hi, (p90, exact)
        assert sum(histogram(m.extra, "rss").values()) == 900  # a quarter not measured
        # every run counted in the broker's current minute (or the one before, at a turn)
        assert sum(m.recent.values()) == 1200 and set(m.recent) <= {minute - 1, minute}
        assert rate(m.recent, await broker.now()) > 0


async def test_run_counts_outside_two_hours_are_dropped(brokers):
    a, b = brokers
    minute = int(await a.now() // 60)
    old, kept, ahead = minute - 180, minute - 30, minute + 5
    await a.record([TaskMetrics("m.window", 3, recent={old: 3, kept: 4, ahead: 9})])
    await b.record([TaskMetrics("m.window", 2, recent={kept: 2})])
    m = await _read(a, "m.window")
    assert m.count == 5
    assert m.recent == {kept: 6}, "slots 3 h old or 5 min ahead must be dropped"
    assert not any(k.startswith("m.") for k in m.extra), "run counts leaked into extra"


async def test_extra_max_keys_keep_the_largest(brokers):
    a, b = brokers
    await a.record([TaskMetrics("m.max", 1, extra={"queue_wait_max": 3.0, "expired": 1.0})])
    await b.record([TaskMetrics("m.max", 1, extra={"queue_wait_max": 2.0, "expired": 2.0})])
    m = await _read(a, "m.max")
    assert m.extra == {"queue_wait_max": 3.0, "expired": 3.0}


async def test_stored_run_counts_stay_bounded(brokers, broker_kind, broker_url):
    """A slot that aged past two hours goes: SQLite and PostgreSQL drop it when the row is
    next written; on Redis each minute's hash expires two hours after its minute."""
    a, _ = brokers
    minute = int(await a.now() // 60)
    await a.record([TaskMetrics("m.bounded", 1)])
    stale = f"m.{minute - 200}"
    if broker_kind == "redis":
        import redis

        prefix = _param(broker_url, "prefix")
        with redis.Redis.from_url(_without(broker_url, "prefix")) as r:
            keys = [k.decode() for k in r.scan_iter(match=f"{{{prefix}}}:runs:*")]
            assert keys, "no runs-per-minute hash was written"
            for key in keys:
                slot = int(key.rsplit(":", 1)[1])
                assert slot in (minute, minute + 1)
                ttl = r.ttl(key)
                assert 120 * 60 < ttl <= 122 * 60, f"{key} expires in {ttl} s"
        return
    _write_extra(broker_kind, broker_url, "m.bounded", {stale: 7.0})
    assert stale in _read_extra(broker_kind, broker_url, "m.bounded")
    got = (await _read(a, "m.bounded")).recent
    assert sum(got.values()) == 1, f"a slot 200 minutes old was read back: {got}"
    await a.record([TaskMetrics("m.bounded", 1)])
    stored = _read_extra(broker_kind, broker_url, "m.bounded")
    assert stale not in stored, f"record kept a slot 200 minutes old: {sorted(stored)}"
    assert sum(v for k, v in stored.items() if k.startswith("m.")) == 2


def _without(url: str, key: str) -> str:
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query) if k != key]
    return urlunsplit(parts._replace(query=urlencode(query)))


def _sqlite_path(url: str) -> str:
    return url.removeprefix("sqlite:///")


def _read_extra(kind: str, url: str, task: str) -> dict[str, float]:
    if kind == "sqlite":
        with sqlite3.connect(_sqlite_path(url)) as conn:
            (raw,) = conn.execute("SELECT extra FROM metrics WHERE task = ?", (task,)).fetchone()
        return json.loads(raw)
    import psycopg

    schema = _param(url, "schema")
    with psycopg.connect(_without(url, "schema")) as conn:
        row = conn.execute(f'SELECT extra FROM "{schema}".metrics WHERE task = %s', (task,))
        (extra,) = row.fetchone()
    return {k: float(v) for k, v in extra.items()}


def _write_extra(kind: str, url: str, task: str, add: dict[str, float]) -> None:
    """Put keys into a stored row's extra behind the broker's back (a slot written long
    ago, which the broker would no longer write itself)."""
    extra = {**_read_extra(kind, url, task), **add}
    if kind == "sqlite":
        with sqlite3.connect(_sqlite_path(url)) as conn:
            conn.execute("UPDATE metrics SET extra = ? WHERE task = ?", (json.dumps(extra), task))
        return
    import psycopg
    from psycopg.types.json import Jsonb

    schema = _param(url, "schema")
    with psycopg.connect(_without(url, "schema")) as conn:
        conn.execute(
            f'UPDATE "{schema}".metrics SET extra = %s WHERE task = %s', (Jsonb(extra), task)
        )


# ---- App.profile() and `offload profile` after real workers, on every broker ---------------

SPEC = "tests.conformance.profileapp:app"


@pytest.fixture
def profiled(broker_url, monkeypatch):
    monkeypatch.setenv("OFFLOAD_BROKER", broker_url)  # the App reads it when made
    import tests.conformance.profileapp as mod

    mod = importlib.reload(mod)
    yield mod.app
    mod.app.close()


def test_profile_after_real_workers(profiled):
    app = profiled
    app.get_task("threads.hold").send_many([((1,), {}) for _ in range(12)])
    app.get_task("children.hold").send_many([((16,), {}) for _ in range(4)])
    stats = asyncio.run(Worker(app, queues=["threads", "children"], burst=True).run())
    assert (stats.succeeded, stats.dead) == (16, 0)
    p = app.profile()
    th, ch = p.task("threads.hold"), p.task("children.hold")
    assert (th.runs, ch.runs) == (12, 4)
    # the worker's growth, approximate; runs under a millisecond are sampled (1 in 16)
    assert th.rss_exact is False and 1 <= th.rss_runs <= 12
    # the child's own peak above what it held before, exactly: about the 16 MiB; the
    # max is exact, a percentile within one bucket (19%) of it
    assert ch.rss_exact is True and ch.rss_runs == 4
    assert 12 * MiB <= ch.rss_peak_max < 64 * MiB, ch
    assert ch.rss_peak_max / 1.19 <= ch.rss_peak_p50 <= ch.rss_peak_max, ch
    assert ch.wall_p90 > 0 and ch.cpu_p90 > 0 and ch.rate > 0
    services = {s.service: s for s in p.services}
    assert services["idle"].runs == 0 and services["idle"].rate == 0.0
    assert services["children"].memory_limit == 512 * MiB
    assert services["threads"].runs == 12

    r = CliRunner().invoke(main, ["profile", SPEC, "--json"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    # A rate is runs over the time since the oldest minute counted, read at each call's
    # own broker time: the two reads may differ in the last digits (once that span is past
    # a minute), and only there.
    cli, api = json.loads(r.output), json.loads(json.dumps(app.profile().to_dict()))
    cli_rates, api_rates = _pop_rates(cli), _pop_rates(api)
    assert cli == api
    assert cli_rates == pytest.approx(api_rates, rel=1e-3)


def _pop_rates(d: dict) -> list[float]:
    return [row.pop("rate") for row in (*d["tasks"], *d["services"])]
