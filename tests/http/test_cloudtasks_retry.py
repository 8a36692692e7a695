"""A Cloud Tasks ``retryConfig`` is stored in the broker and applied by every worker serving
the queue, over its own App's declaration (docs/http.md, "Where a queue's settings
live"): on every broker, a task that always fails is dead-lettered after the stored number
of attempts by a worker whose App declared another; a patch changes it, also for a worker
already running; a server restart keeps it."""

from __future__ import annotations

import asyncio
import logging
import time

import httpx

from offload import App, Retry
from offload.brokers import broker_from_url
from offload.core.policy import QueuePolicy, RetryPolicy
from offload.testing import run_until_idle
from offload.worker.policies import StoredRetry

from .test_cloudtasks import PARENT, TOKEN, Server, qpath

H = {"Authorization": f"Bearer {TOKEN}"}


def worker_app(url: str) -> App:
    """The workers' App: it declares the queue with another retry policy (6 attempts)."""
    w = App("ctworkers", broker=url)
    w.queue("flaky", retry=Retry(limit=5, min_backoff=0.01, max_backoff=0.01))

    @w.task(queue="flaky", name="ctworkers.always_fails")
    def always_fails(n: int) -> None:
        raise RuntimeError(f"failure {n}")

    return w


def attempts_of(w: App, n: int) -> int:
    """Send task ``n``, run the queue until idle, and return its dead letter's attempts."""
    w.get_task("ctworkers.always_fails").send(n)
    run_until_idle(w, ["flaky"], timeout=60)
    (dead,) = [d for d in w.dead_letters("flaky") if d.args == [n]]
    assert "retry policy exhausted" in dead.error
    return dead.attempts


def test_a_stored_retry_config_wins_over_the_workers_declaration(broker_url):
    serving = App("ctserve", broker=broker_url)  # does not declare "flaky"
    w = worker_app(broker_url)
    try:
        with Server(serving) as s:
            base = f"http://127.0.0.1:{s.port}/v2"
            made = {
                "name": qpath("flaky"),
                "retryConfig": {"maxAttempts": 2, "minBackoff": "0.01s", "maxBackoff": "0.01s"},
            }
            r = httpx.post(f"{base}/{PARENT}/queues", headers=H, json=made)
            assert r.status_code == 200 and r.json()["retryConfig"]["maxAttempts"] == 2, r.text
            assert attempts_of(w, 1) == 2, "the worker applied its own Retry(limit=5)"

            r = httpx.patch(
                f"{base}/{qpath('flaky')}",
                params={"updateMask": "retryConfig.maxAttempts"},
                headers=H,
                json={"retryConfig": {"maxAttempts": 4}},
            )
            assert r.status_code == 200, r.text
            assert r.json()["retryConfig"]["maxAttempts"] == 4
            assert r.json()["retryConfig"]["minBackoff"] == "0.01s", "the mask kept the rest"
            assert attempts_of(w, 2) == 4

            # a patch of the rate limits alone leaves the stored retry policy as it is
            r = httpx.patch(
                f"{base}/{qpath('flaky')}",
                params={"updateMask": "rateLimits.maxConcurrentDispatches"},
                headers=H,
                json={"rateLimits": {"maxConcurrentDispatches": 3}},
            )
            assert r.status_code == 200 and r.json()["retryConfig"]["maxAttempts"] == 4
        # the workers' App declared "flaky" again at each start: the override stays
        assert attempts_of(w, 3) == 4

        again = App("ctserve", broker=broker_url)  # a restarted server
        try:
            with Server(again) as s:
                got = httpx.get(f"http://127.0.0.1:{s.port}/v2/{qpath('flaky')}", headers=H)
        finally:
            again.close()
        assert got.status_code == 200
        assert got.json()["retryConfig"]["maxAttempts"] == 4
        assert got.json()["retryConfig"]["maxBackoff"] == "0.01s"
        # unlike the retry override, rate limits are the last declaration's: the workers'
        assert "maxConcurrentDispatches" not in got.json()["rateLimits"]
    finally:
        w.close()
        serving.close()


async def test_a_running_worker_picks_up_a_changed_override(broker_url, caplog):
    """StoredRetry (the worker's refresher): an override applies, replacing only retry; a
    changed one applies at the next refresh; a cleared one gives the declaration back."""
    declared = QueuePolicy("refresh", lease=7.0, retry=RetryPolicy(limit=5))
    policies = {"refresh": declared}
    b = broker_from_url(broker_url)
    await b.open()
    try:
        await b.declare([declared])
        keeper = StoredRetry(policies)
        await keeper.refresh(b)
        assert policies["refresh"] is declared
        one, three = RetryPolicy(limit=1), RetryPolicy(limit=3, min_backoff=2.0)
        await b.set_retry_override("refresh", one)
        with caplog.at_level(logging.WARNING, "offload.worker"):
            await keeper.refresh(b)
        assert policies["refresh"].retry == one and policies["refresh"].lease == 7.0
        assert "overrides this App's declaration" in caplog.text

        closed = asyncio.Event()
        job = asyncio.create_task(keeper.keep(b, closed, every=0.05))
        await b.set_retry_override("refresh", three)
        deadline = time.monotonic() + 10
        while policies["refresh"].retry != three:
            assert time.monotonic() < deadline, "the refresher never applied the change"
            await asyncio.sleep(0.02)
        await b.set_retry_override("refresh", None)
        while policies["refresh"] is not declared:
            assert time.monotonic() < deadline, "the refresher never cleared the override"
            await asyncio.sleep(0.02)
        closed.set()
        await asyncio.wait_for(job, 5)
    finally:
        await b.close()
