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
