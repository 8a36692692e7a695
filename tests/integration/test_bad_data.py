"""Garbage written straight into each broker's storage (rows, keys), including a pickle
that would run code if anything unpickled it: a worker process dead-letters it with a
reason, survives, and runs the good work queued behind it."""

from __future__ import annotations

import asyncio
import os
import pickle
import time

import pytest

from offload.brokers import broker_from_url

pytestmark = [pytest.mark.timeout(90), pytest.mark.slow]


class _Bomb:
    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


def _inject(url: str, kind: str, payloads: dict[str, bytes]) -> None:
    now = time.time() - 10  # due before the good task
    if kind == "sqlite":
        import sqlite3

        conn = sqlite3.connect(url.removeprefix("sqlite:///"))
        with conn:
            for i, (tid, payload) in enumerate(payloads.items()):
                conn.execute(
                    "INSERT INTO tasks (id, queue, payload, visible_at, enqueued_at) "
                    "VALUES (?, 'q', ?, ?, ?)",
                    (tid, payload, now + i * 1e-3, now),
                )
        conn.close()
    elif kind == "postgres":
        import psycopg

        from tests.conftest import POSTGRES_URL

        schema = url.rsplit("schema=", 1)[1]
        with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
            for i, (tid, payload) in enumerate(payloads.items()):
                conn.execute(
                    f'INSERT INTO "{schema}".tasks (id, queue, payload, visible_at, '
                    "enqueued_at) VALUES (%s, 'q', %s, %s, %s)",
                    (tid, payload, now + i * 1e-3, now),
                )
    else:
        import redis

        from offload.brokers.redis.scripts import QueueKeys
        from tests.conftest import REDIS_URL

        prefix = url.rsplit("prefix=", 1)[1]
        k = dict(
            zip(
                ("q", "due", "leased", "tasks", "dead", "names", "nexp", "wake", "parked"),
                QueueKeys.of(prefix, "q").keys,
                strict=True,
            )
        )
        r = redis.Redis.from_url(REDIS_URL)
        # a record that is not a record at all, and a valid record with a garbage payload
        first, *rest = payloads.items()
        r.hset(k["tasks"], first[0], first[1])
        r.zadd(k["due"], {first[0]: now})
        r.close()

        async def enqueue_raw():
            from offload.brokers.base import NewTask

            b = broker_from_url(url)
            await b.open()
            await b.enqueue([NewTask(tid, "q", payload) for tid, payload in rest])
            await b.close()

        asyncio.run(enqueue_raw())


def test_garbage_in_storage_is_dead_lettered_and_never_unpickled(harness, broker_kind, tmp_path):
    h = harness(PROC_LEASE="5")
    h.app.open()  # creates the schema
    marker = tmp_path / "pwned"
    payloads = {
        "garbage": b"\xc1\xc1\x00 not an envelope",
        "pickled": pickle.dumps(_Bomb(str(marker))),
        "wrongshape": b"\x93\x01\x02\x03",
    }
    _inject(h.app.broker_url, broker_kind, payloads)
    h.mod.noop.send("good")
    w = h.worker("-c", "4", "--burst")
    assert w.wait(60) == 0, w.stdout.read().decode()
    assert [e[1] for e in h.events() if e[0] == "end"] == ["good"]
    assert not marker.exists(), "a payload was unpickled"
    dead = {d.id: d for d in h.app.dead_letters("q")}
    assert set(dead) == set(payloads), dead
    for d in dead.values():
        if broker_kind == "redis" and d.id == "garbage":  # not even a task record
            assert "corrupt task record" in d.error, d
        else:
            assert d.error.startswith("undecodable payload: "), d
            assert d.task == "<undecodable payload>"
