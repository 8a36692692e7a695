"""Events on every broker: one publish reaches every subscriber's queue in one broker
transaction, a keyed publish is idempotent, an outage enqueues nothing, bad input fails
at the publisher."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from urllib.parse import urlsplit, urlunsplit

import pytest

from offload import App, BrokerUnavailable, ConfigError, PayloadError

from .conftest import ThreadWorker, lines, load_app, wait_for

QUEUES = ["emails", "payments", "audit"]


@pytest.fixture
def m(calls_app):
    import tests.calls.callapp as callapp

    return callapp


def _waiting(app: App) -> dict[str, int]:
    return {q: app.stats(q).ready for q in QUEUES}


def test_three_subscribers_on_three_queues(calls_app, m, sink):
    subs = calls_app.subscribers("user.signed_up")
    assert [s.name for s in subs] == [m.welcome.name, m.open_account.name, m.audit.name]
    handles = calls_app.publish("user.signed_up", {"id": 42})
    assert sorted(h.queue for h in handles) == sorted(QUEUES)
    assert _waiting(calls_app) == dict.fromkeys(QUEUES, 1)
    asyncio.run(calls_app.publish_async("user.signed_up", {"id": 43}))
    with ThreadWorker(calls_app, queues=QUEUES):
        want = {f"{kind} {i}" for kind in ("welcome", "account", "audit") for i in (42, 43)}
        wait_for(lambda: want <= set(lines(sink)), what="every subscriber")
    assert sorted(lines(sink)) == sorted(want)


def test_a_keyed_publish_twice_delivers_once(calls_app, m, sink):
    first = calls_app.publish("user.signed_up", {"id": 7}, key="signup-7")
    second = calls_app.publish("user.signed_up", {"id": 7}, key="signup-7")
    assert len(first) == 3 and second == [], "a repeated key must be a no-op, not an error"
    with ThreadWorker(calls_app, queues=QUEUES):
        wait_for(lambda: len(lines(sink)) >= 3, what="the first delivery")
        again = calls_app.publish("user.signed_up", {"id": 7}, key="signup-7")
        assert again == [], "within the dedup window the key stays taken after the run"
        time.sleep(0.3)
    assert sorted(lines(sink)) == ["account 7", "audit 7", "welcome 7"]


def test_a_publish_during_an_outage_raises_and_enqueues_nothing(
    broker_kind, broker_url, calls_app, tmp_path
):
    calls_app.open()
    if broker_kind == "sqlite":
        # another process holds the database's write lock past the busy timeout
        path = urlsplit(broker_url).path[1:]
        blocked = load_app(f"sqlite:///{path}?busy_timeout=100", tmp_path / "sink2")
        holder = sqlite3.connect(path, isolation_level=None)
        holder.execute("BEGIN EXCLUSIVE")
        try:
            with pytest.raises(BrokerUnavailable):
                blocked.publish("user.signed_up", {"id": 1})
        finally:
            holder.execute("ROLLBACK")
            holder.close()
            blocked.close()
    else:
        parts = urlsplit(broker_url)
        down = urlunsplit(parts._replace(netloc=f"{parts.hostname}:1"))
        blocked = load_app(down, tmp_path / "sink2")
        try:
            with pytest.raises(BrokerUnavailable):
                blocked.publish("user.signed_up", {"id": 1})
        finally:
            blocked.close()
    assert _waiting(calls_app) == dict.fromkeys(QUEUES, 0)


def test_bad_input_fails_at_the_publisher(calls_app, m, caplog):
    with pytest.raises(PayloadError, match=r"payload|user"):
        calls_app.publish("user.signed_up", {"id": object()})
    assert _waiting(calls_app) == dict.fromkeys(QUEUES, 0), "nothing may be sent"
    with pytest.raises(ConfigError, match="event name"):
        calls_app.publish("bad name!", 1)
    with caplog.at_level(logging.DEBUG, logger="offload.events"):
        assert calls_app.publish("nobody.listens", 1) == []
    assert "no subscribers" in caplog.text
    with pytest.raises(ConfigError, match="one argument"):

        @calls_app.on("user.signed_up", queue="emails")
        def two(a, b):
            pass


def test_a_service_subscriber_belongs_to_its_service_and_runs_in_its_pool(
    calls_app, m, sink, tmp_path
):
    billing = calls_app.services["billing"]
    assert calls_app.subscribers("order.placed") == [m.invoice]
    assert m.invoice.service is billing and m.invoice.queue == "invoices"
    assert billing.tasks == {m.invoice.name: m.invoice}
    assert m.invoice.name not in calls_app.services["default"].tasks
    topo = tmp_path / "topology.toml"
    topo.write_text(
        '[pools.web]\nservices = ["default"]\nmachine = "e2-standard-2"\n\n'
        '[pools.billing]\nservices = ["billing"]\nmachine = "e2-standard-2"\n'
    )
    placed = calls_app.placement(str(topo))
    assert placed.pool_of("billing") == "billing"
    assert placed.queues["billing"] == ("invoices",)
    assert "invoices" not in placed.queues["web"]
    (handle,) = calls_app.publish("order.placed", {"id": 9})
    assert handle.queue == "invoices" and handle.task == m.invoice.name
    with ThreadWorker(calls_app, queues=list(placed.queues["billing"])):
        wait_for(lambda: "invoice 9" in lines(sink), what="the billing pool's subscriber")


def test_a_service_subscriber_is_checked_like_an_app_one(calls_app, m):
    billing = calls_app.services["billing"]
    with pytest.raises(ConfigError, match=r"@billing\.on\('order\.placed'\).*one argument"):

        @billing.on("order.placed", queue="invoices", name="two_args")
        def two(a, b):
            pass

    with pytest.raises(ConfigError, match="event name"):
        billing.on("bad name!", queue="invoices")
    assert calls_app.subscribers("order.placed") == [m.invoice]
