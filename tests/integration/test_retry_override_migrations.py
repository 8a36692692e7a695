"""Retry overrides are a schema migration (SQLite version 4, PostgreSQL migration 4): a
database the previous code left, with declared, paused and rate-limited queues and tasks
in several states, is migrated when opened, keeps every queue's policy, pause and tasks,
and then stores overrides."""

from __future__ import annotations

import asyncio
import sqlite3
import time

import pytest

from offload.brokers import broker_from_url
from offload.brokers.base import EnforcedPolicy
from offload.brokers.sqlite.queries import _step_sql
from offload.core.policy import RetryPolicy

from ..conftest import _drop_pg_schema, _param, make_url

OVERRIDE = RetryPolicy(limit=1, min_backoff=0.5, max_backoff=5.0, max_doublings=1)


async def _works_after(url: str) -> None:
    """What the old database held is there, and an override can be stored and read."""
    b = broker_from_url(url)
    await b.open()
    try:
        s = await b.stats("q")
        assert s.policy == EnforcedPolicy(5.0, 5.0, 3, 30.0, 60.0)
        assert s.ready == 1 and s.dead == 1 and not s.paused
        p = await b.stats("p")
        assert p.paused and p.policy is None
        assert await b.retry_overrides(["q", "p"]) == {}
        await b.set_retry_override("q", OVERRIDE)
        assert await b.retry_overrides(["q", "p"]) == {"q": OVERRIDE}
        assert (await b.stats("q")).policy == s.policy, "the override changed the policy"
        (c,) = await b.claim(["q"], 1)
        assert c.id == "ready-1" and c.payload == b"kept"
        assert [d.id for d in await b.dead_letters("q")] == ["dead-1"]
    finally:
        await b.close()


# -- SQLite -----------------------------------------------------------------------------------


def test_a_version_3_sqlite_database_migrates_to_4_and_keeps_its_queues(tmp_path):
    path = tmp_path / "old.db"
    raw = sqlite3.connect(path, isolation_level=None)
    raw.executescript(_step_sql(1) + _step_sql(2) + _step_sql(3) + "PRAGMA user_version = 3;")
    now = time.time()
    raw.execute(
        "INSERT INTO queues (name, rate, bucket, max_concurrent, lease, dedup_window, tokens,"
        " tokens_at, declared_at) VALUES ('q', 5.0, 5.0, 3, 30.0, 60.0, 5.0, ?, ?)",
        (now, now),
    )
    raw.execute("INSERT INTO queues (name, lease, dedup_window, paused) VALUES ('p', 60, 60, 1)")
    raw.execute(
        "INSERT INTO tasks (id, queue, payload, state, visible_at, enqueued_at)"
        " VALUES ('ready-1', 'q', x'6b657074', 0, ?, ?)",
        (now - 1, now - 1),
    )
    raw.execute(
        "INSERT INTO tasks (id, queue, payload, state, visible_at, attempts, enqueued_at,"
        " error, traceback, failed_at) VALUES ('dead-1', 'q', x'00', 2, ?, 4, ?, 'e', 't', ?)",
        (now, now - 5, now - 1),
    )
    raw.close()
    asyncio.run(_works_after(f"sqlite:///{path}"))
    raw = sqlite3.connect(path)
    try:
        assert raw.execute("PRAGMA user_version").fetchone()[0] == 4
        cols = [r[1] for r in raw.execute("PRAGMA table_info(queues)")]
        assert cols[-1] == "retry"
    finally:
        raw.close()


# -- PostgreSQL -------------------------------------------------------------------------------


@pytest.fixture
def pg_url(tmp_path):
    url = make_url("postgres", tmp_path)  # skips without a server (fails under CI)
    yield url
    _drop_pg_schema(url)


def test_a_postgres_schema_at_003_migrates_to_004_and_keeps_its_queues(pg_url):
    import psycopg

    from offload.brokers.postgres.queries import MIGRATIONS, _read, fill

    from ..conftest import POSTGRES_URL

    schema = _param(pg_url, "schema")
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn, conn.transaction():
        conn.execute(fill(_read("bootstrap.sql"), schema))
        for version, _, text in MIGRATIONS[:3]:
            conn.execute(fill(text, schema))
            conn.execute(
                fill("INSERT INTO {schema}.schema_version (version) VALUES (%s)", schema),
                (version,),
            )
        conn.execute(
            fill(
                "INSERT INTO {schema}.queues (name, rate, bucket, max_concurrent, lease,"
                " dedup_window) VALUES ('q', 5.0, 5.0, 3, 30.0, 60.0);"
                "INSERT INTO {schema}.queues (name, paused, declared) VALUES ('p', true, false)",
                schema,
            )
        )
        now = "extract(epoch FROM clock_timestamp())"
        conn.execute(
            fill(
                "INSERT INTO {schema}.tasks (id, queue, payload, state, visible_at, enqueued_at)"
                f" VALUES ('ready-1', 'q', 'kept', 'ready', {now} - 1, {now} - 1)",
                schema,
            )
        )
        conn.execute(
            fill(
                "INSERT INTO {schema}.tasks (id, queue, payload, state, visible_at, attempts,"
                " enqueued_at, error, traceback, failed_at) VALUES ('dead-1', 'q', '\\x00',"
                f" 'dead', {now}, 4, {now} - 5, 'e', 't', {now} - 1)",
                schema,
            )
        )
    asyncio.run(_works_after(pg_url))
    with psycopg.connect(POSTGRES_URL) as conn:
        versions = conn.execute(
            f'SELECT version FROM "{schema}".schema_version ORDER BY version'
        ).fetchall()
    assert [v for (v,) in versions][:4] == [1, 2, 3, 4]
