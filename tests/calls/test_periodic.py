"""Periodic tasks on every broker: three workers keep one schedule and each slot fires
exactly once; after downtime only the latest missed slot fires; ``offload periodic``
lists the schedules; bad schedules fail where they are declared."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import time

import pytest

from offload import App, ConfigError

from .conftest import ROOT, lines, wait_for


def _slots(sink) -> list[int]:
    """The slots fired so far (epoch seconds), in the order their tasks ran."""
    out = []
    for line in lines(sink):
        if line.startswith("tick "):
            stamp = line.split()[1].rsplit("@", 1)[1].rstrip("Z")
            out.append(int(dt.datetime.fromisoformat(stamp).replace(tzinfo=dt.UTC).timestamp()))
    return out


def _stop(p: subprocess.Popen) -> None:
    p.terminate()
    p.wait(timeout=20)


def test_three_workers_fire_each_slot_exactly_once(calls_app, worker_procs, sink):
    procs = [worker_procs("--queues", "reports") for _ in range(3)]
    wait_for(lambda: len(_slots(sink)) >= 1, timeout=20, what="the first slot")
    time.sleep(8)
    for p in procs:
        _stop(p)
    slots = _slots(sink)
    assert len(slots) == len(set(slots)), f"a slot fired twice: {slots}"
    assert len(slots) >= 7, f"only {len(slots)} slots fired in 8 s: {slots}"
    assert sorted(slots) == list(range(min(slots), max(slots) + 1)), f"a slot was missed: {slots}"


def test_after_downtime_only_the_latest_missed_slot_fires(calls_app, worker_procs, sink):
    first = worker_procs("--queues", "reports")
    wait_for(lambda: len(_slots(sink)) >= 2, timeout=20, what="two slots")
    _stop(first)
    before = _slots(sink)
    time.sleep(5)
    worker_procs("--queues", "reports")
    wait_for(lambda: len(_slots(sink)) >= len(before) + 3, timeout=20, what="slots after restart")
    after = sorted(_slots(sink)[len(before) :])
    caught_up = after[0]
    assert caught_up - max(before) >= 4, (
        f"after 5 s down, the first slot fired was {caught_up - max(before)} s after the last "
        f"one before: the missed slots were replayed ({after})"
    )
    assert after == list(range(caught_up, caught_up + len(after))), after


def test_offload_periodic_lists_next_and_last(calls_app, broker_url, sink, worker_procs):
    env = {**os.environ, "OFFLOAD_BROKER": broker_url, "CALLS_SINK": str(sink)}
    cmd = [sys.executable, "-m", "offload", "periodic", "tests.calls.callapp:app", "--json"]

    def rows() -> list[dict]:
        out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)

    (row,) = rows()
    assert row["cron"] == "* * * * * *" and row["queue"] == "reports" and row["tz"] == "UTC"
    assert row["next"] > time.time() - 1 and row["last"] is None
    p = worker_procs("--queues", "reports")
    wait_for(lambda: len(_slots(sink)) >= 1, timeout=20, what="a slot")
    _stop(p)
    (row,) = rows()
    assert row["last"] is not None and row["last"] >= max(_slots(sink))
    text = subprocess.run(cmd[:-1], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert "'* * * * * *' (UTC)  queue=reports" in text.stdout


def test_bad_schedules_fail_where_declared(tmp_path, monkeypatch):
    app = App("bad", broker=f"sqlite:///{tmp_path / 'x.db'}")
    app.queue("reports")
    with pytest.raises(ConfigError, match="not a cron expression"):

        @app.periodic("every five minutes", queue="reports")
        def a() -> None:
            pass

    with pytest.raises(ConfigError, match="without arguments"):

        @app.periodic("*/5 * * * *", queue="reports")
        def b(region: str) -> None:
            pass

    with pytest.raises(ConfigError, match="time zone"):

        @app.periodic("*/5 * * * *", queue="reports", tz="Mars/Olympus")
        def c() -> None:
            pass

    monkeypatch.setitem(sys.modules, "croniter", None)  # as if not installed
    with pytest.raises(ConfigError, match=r"pip install 'offload\[cron\]'"):

        @app.periodic("*/5 * * * *", queue="reports")
        def d() -> None:
            pass
