"""Bad input at the App and the send call: one clear OffloadError at the call, before any
I/O, the same on every broker; and an App built on a Broker instance."""

from __future__ import annotations

import math

import pytest

from offload import App, BadArguments, OffloadError, Worker
from offload.brokers.sqlite import SQLiteBroker
from offload.errors import BrokerURLError
from offload.testing.apps import run_until_idle


@pytest.mark.parametrize("url", ["", "   "])
def test_an_empty_broker_url_is_an_error_not_the_default(url, monkeypatch):
    monkeypatch.delenv("OFFLOAD_BROKER", raising=False)
    with pytest.raises(BrokerURLError, match="empty"):
        App("a", broker=url)


def test_a_broker_that_is_neither_url_nor_broker_is_refused():
    with pytest.raises(OffloadError, match="Broker instance"):
        App("a", broker=42)  # type: ignore[arg-type]


def test_an_app_runs_on_a_broker_instance(tmp_path):
    broker = SQLiteBroker(f"sqlite:///{tmp_path / 'i.db'}")
    app = App("inst", broker=broker)
    done: list[int] = []

    @app.task(name="job")
    def job(x: int) -> None:
        done.append(x)

    job.send(1)
    job.send(2)
    assert app.stats("default").ready == 2
    stats = run_until_idle(app)  # the worker builds its own broker of the same class
    assert stats.succeeded == 2 and sorted(done) == [1, 2]
    app.close()


@pytest.mark.parametrize(
    "options",
    [
        {"deadline": math.nan},
        {"deadline": -5},
        {"deadline": 1e10},
        {"deadline": "soon"},
        {"delay": math.inf},
        {"delay": 1e12},
        {"delay": -1},
    ],
)
def test_send_options_out_of_range_fail_at_the_call(tmp_path, options):
    app = App("opts", broker=f"sqlite:///{tmp_path / 'o.db'}")

    @app.task(name="job")
    def job() -> None:
        pass

    with pytest.raises(BadArguments):
        job.send_with(**options)
    assert app.stats("default").ready == 0  # nothing was enqueued
    app.close()


@pytest.mark.parametrize(
    "kw", [{"concurrency": 0}, {"concurrency": 2.5}, {"grace": -1}, {"queues": []}]
)
def test_worker_arguments_are_checked(tmp_path, kw):
    app = App("wk", broker=f"sqlite:///{tmp_path / 'w.db'}")
    with pytest.raises(OffloadError):
        Worker(app, **kw)
