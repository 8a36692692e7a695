"""The result store's table is a schema migration (SQLite version 3, PostgreSQL migration
3), not a table made on first use: a database left at the previous version by the older
code, with or without the table that code made at runtime, is migrated when opened, and
results stored before the upgrade are still there."""

from __future__ import annotations

import asyncio
import sqlite3
import time

import pytest

from offload.brokers import broker_from_url
from offload.brokers.sqlite.queries import _step_sql

from ..conftest import _drop_pg_schema, _param, make_url

# What the code before migration 3 ran on first use of results (kept verbatim here: the
# files that held it are gone, and the migration must accept what it left behind).
OLD_SQLITE_RESULTS = """
CREATE TABLE IF NOT EXISTS results (
    key        TEXT PRIMARY KEY,
    value      BLOB NOT NULL,
    expires_at REAL NOT NULL,
    reply_to   TEXT
);
CREATE INDEX IF NOT EXISTS results_reply ON results (reply_to) WHERE reply_to IS NOT NULL;
"""
OLD_POSTGRES_RESULTS = """
SELECT pg_advisory_xact_lock(hashtext({channel} || ':results'));
CREATE TABLE IF NOT EXISTS {schema}.results (
    key        text             NOT NULL,
    value      bytea            NOT NULL,
    expires_at double precision NOT NULL,
    CONSTRAINT results_pkey PRIMARY KEY (key)
);
CREATE INDEX IF NOT EXISTS results_expires ON {schema}.results (expires_at);
"""


async def _open_and_close(url: str) -> None:
    b = broker_from_url(url)
    await b.open()
    await b.close()


async def _results_work(url: str, kept: bytes | None) -> None:
    """Open the new broker on the old database: the kept result reads back, and a result
    stored now is delivered to its channel and read back."""
    b = broker_from_url(url)
    await b.open()
    try:
        assert await b.get_result("old-task") == kept
        await b.wait_results("chan-1", 0)  # listening (PostgreSQL LISTENs on first call)
        await b.put_result("new-task", b"new", 60.0, "chan-1")
        assert await b.get_result("new-task") == b"new"
        got = await b.wait_results("chan-1", 5.0)
        assert got == [("new-task", b"new")]
    finally:
        await b.close()


# -- SQLite -----------------------------------------------------------------------------------


def _sqlite_v2(path, with_results: bool) -> None:
    raw = sqlite3.connect(path, isolation_level=None)
    raw.executescript(_step_sql(1) + _step_sql(2) + "PRAGMA user_version = 2;")
    if with_results:
        raw.executescript(OLD_SQLITE_RESULTS)
        raw.execute(
            "INSERT INTO results (key, value, expires_at, reply_to) VALUES (?, ?, ?, NULL)",
            ("old-task", b"kept", time.time() + 3600),
        )
    raw.close()


def _sqlite_tables(path) -> tuple[int, set[str]]:
    raw = sqlite3.connect(path)
    try:
        (version,) = raw.execute("PRAGMA user_version").fetchone()
        names = {r[0] for r in raw.execute("SELECT name FROM sqlite_master")}
        return version, names
    finally:
        raw.close()


@pytest.mark.parametrize("with_results", [True, False], ids=["with-table", "without-table"])
def test_a_version_2_sqlite_database_migrates_to_3_and_keeps_its_results(tmp_path, with_results):
    path = tmp_path / "old.db"
    _sqlite_v2(path, with_results)
    url = f"sqlite:///{path}"
    asyncio.run(_open_and_close(url))
    # made by opening, before any result is stored or read
    version, names = _sqlite_tables(path)
    assert version >= 3 and {"results", "results_reply"} <= names
    asyncio.run(_results_work(url, b"kept" if with_results else None))


def test_a_new_sqlite_database_has_the_results_table_from_the_start(tmp_path):
    path = tmp_path / "new.db"
    asyncio.run(_open_and_close(f"sqlite:///{path}"))
    version, names = _sqlite_tables(path)
    assert version >= 3 and {"results", "results_reply"} <= names


# -- PostgreSQL ---------------------------------------------------------------------------


@pytest.fixture
def pg_url(tmp_path):
    url = make_url("postgres", tmp_path)  # skips without a server (fails under CI)
    yield url
    _drop_pg_schema(url)


def _pg_admin():
    import psycopg

    from ..conftest import POSTGRES_URL

    return psycopg.connect(POSTGRES_URL, autocommit=True)


def _pg_at_002(url: str, with_results: bool) -> None:
    """The schema as the code before migration 3 left it: bootstrap, migrations 1 and 2
    recorded, and (when it had stored a result) the table it made on first use."""
    from offload.brokers.postgres.queries import MIGRATIONS, _read, fill

    schema = _param(url, "schema")
    with _pg_admin() as conn, conn.transaction():
        conn.execute(fill(_read("bootstrap.sql"), schema))
        for version, _, text in MIGRATIONS[:2]:
            conn.execute(fill(text, schema))
            conn.execute(
                fill("INSERT INTO {schema}.schema_version (version) VALUES (%s)", schema),
                (version,),
            )
        if with_results:
            conn.execute(fill(OLD_POSTGRES_RESULTS, schema))
            conn.execute(
                fill(
                    "INSERT INTO {schema}.results VALUES "
                    "('old-task', 'kept', extract(epoch FROM clock_timestamp()) + 3600)",
                    schema,
                )
            )


def _pg_state(url: str) -> tuple[list[int], bool]:
    schema = _param(url, "schema")
    with _pg_admin() as conn:
        versions = [
            r[0]
            for r in conn.execute(
                f'SELECT version FROM "{schema}".schema_version ORDER BY version'
            ).fetchall()
        ]
        (table,) = conn.execute("SELECT to_regclass(%s)", (f'"{schema}".results',)).fetchone()
    return versions, table is not None


@pytest.mark.parametrize("with_results", [True, False], ids=["with-table", "without-table"])
def test_a_postgres_schema_at_002_migrates_to_003_and_keeps_its_results(pg_url, with_results):
    _pg_at_002(pg_url, with_results)
    assert _pg_state(pg_url) == ([1, 2], with_results)
    asyncio.run(_open_and_close(pg_url))
    versions, table = _pg_state(pg_url)
    assert versions[:3] == [1, 2, 3] and table, "opening must apply migration 003"
    asyncio.run(_results_work(pg_url, b"kept" if with_results else None))
