"""/metrics parses with prometheus-client's own parser, and its values are app.stats' and
app.metrics' on every broker; a worker's own hooks count retries, dead letters and expired
claims with a real duration histogram."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client.parser import text_string_to_metric_families
from starlette.testclient import TestClient

from offload import App, Retry, Worker
from offload.http import create_app
from offload.http.metrics import EXTRA, WorkerMetrics
from offload.testing import run_until_idle

TOKEN = "metrics-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def make_app(url: str) -> App:
    app = App("metricsapp", broker=url)
    app.queue("emails", retry=Retry(limit=1, min_backoff=0.01, max_backoff=0.01))
    app.queue("reports")

    @app.task(queue="emails", name="metricsapp.send_email")
    def send_email(to: str) -> None:
        if to == "boom":
            raise RuntimeError("no")

    return app


def scrape(client) -> dict[tuple[str, tuple], float]:
    r = client.get("/metrics", headers=AUTH)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain; version=")
    samples = {}
    for family in text_string_to_metric_families(r.text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def test_metrics_match_app_stats_and_metrics(broker_url):
    app = make_app(broker_url)
    send = app.tasks["metricsapp.send_email"]
    for to in ("a", "b", "boom"):
        send.send(to)
    run_until_idle(app)
    send.send("c")
    send.send_with(["d"], delay=600)
    app.pause("reports")
    with TestClient(create_app(app, tokens=[TOKEN], parts=("metrics",))) as c:
        assert c.get("/metrics").status_code == 401
        samples = scrape(c)
    for queue in ("default", "emails", "reports"):
        s = app.stats(queue)
        q = (("queue", queue),)
        assert samples[("offload_queue_ready", q)] == s.ready
        assert samples[("offload_queue_scheduled", q)] == s.scheduled
        assert samples[("offload_queue_leased", q)] == s.leased
        assert samples[("offload_queue_dead", q)] == s.dead
        assert samples[("offload_queue_paused", q)] == float(s.paused)
    emails = (("queue", "emails"),)
    assert samples[("offload_queue_ready", emails)] == 1
    assert samples[("offload_queue_scheduled", emails)] == 1
    assert samples[("offload_queue_dead", emails)] == 1
    assert samples[("offload_queue_paused", (("queue", "reports"),))] == 1
    assert 0 <= samples[("offload_queue_oldest_ready_age_seconds", emails)] < 60
    assert samples[("offload_queue_oldest_ready_age_seconds", (("queue", "reports"),))] == 0
    [m] = app.metrics()
    t = (("task", "metricsapp.send_email"),)
    assert samples[("offload_task_processed_total", t)] == m.count == 4  # boom ran twice
    assert samples[("offload_task_failed_total", t)] == m.failures == 2
    assert samples[("offload_task_duration_seconds_count", t)] == m.count
    assert samples[("offload_task_duration_seconds_sum", t)] == pytest.approx(m.wall_total)
    assert samples[("offload_task_duration_seconds_bucket", (("le", "+Inf"), *t))] == m.count
    assert samples[("offload_task_cpu_seconds_total", t)] == pytest.approx(m.cpu_total)
    assert samples[("offload_task_expired_total", t)] == m.extra.get("expired", 0)
    app.close()


def test_worker_metrics_count_what_the_worker_saw(broker_url):
    app = make_app(broker_url)
    send = app.tasks["metricsapp.send_email"]
    for to in ("a", "b", "boom"):
        send.send(to)
    hooks = WorkerMetrics()

    async def main() -> None:
        worker = Worker(app, burst=True, hooks=hooks)
        await asyncio.wait_for(worker.run(), 60)

    asyncio.run(main())
    server = create_app(app, tokens=[TOKEN], parts=("metrics",))
    server.state.offload.extras[EXTRA] = hooks
    with TestClient(server) as c:
        samples = scrape(c)
    t = (("task", "metricsapp.send_email"),)
    assert samples[("offload_worker_processed_total", t)] == 4
    assert samples[("offload_worker_failed_total", t)] == 2
    assert samples[("offload_worker_retried_total", t)] == 1
    assert samples[("offload_worker_dead_total", t)] == 1
    assert samples[("offload_worker_duration_seconds_count", t)] == 4
    assert samples[("offload_worker_duration_seconds_bucket", (("le", "0.005"), *t))] >= 1
    # the broker's numbers are there too
    assert samples[("offload_task_processed_total", t)] == 4
    app.close()


def test_expired_claims_are_counted():
    from offload.brokers.base import Claimed

    hooks = WorkerMetrics()
    claim = Claimed("id", "emails", None, b"", 2, 0.0, 0.0, 0.0, "tok", expired=True)
    hooks.claimed(claim)
    hooks.claimed(Claimed("id2", "emails", None, b"", 1, 0.0, 0.0, 0.0, "tok"))
    assert hooks.expired_total.labels("emails")._value.get() == 1
