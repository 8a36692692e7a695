"""Shared fixtures: one namespaced broker URL per test, on every broker the machine has.

Under ``CI=true`` a broker whose server cannot be reached fails the test; elsewhere the test
is skipped with the reason, so a laptop without Redis still runs the rest.
"""

from __future__ import annotations

import os
import socket
import uuid

import pytest

REDIS_URL = os.environ.get("OFFLOAD_TEST_REDIS", "redis://127.0.0.1:6379/0")
POSTGRES_URL = os.environ.get("OFFLOAD_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

BROKERS = ["sqlite", "redis", "postgres"]


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def require_server(kind: str) -> None:
    """Skip (laptop) or fail (CI) when ``kind``'s server is not reachable."""
    if kind == "redis":
        ok, where = _reachable("127.0.0.1", 6379), REDIS_URL
    elif kind == "postgres":
        ok, where = _reachable("127.0.0.1", 5432), POSTGRES_URL
    else:
        return
    if ok:
        return
    msg = f"{kind} server not reachable at {where}"
    if IN_CI:
        pytest.fail(f"{msg} (CI=true: broker tests must not skip)")
    pytest.skip(f"{msg}; start it to run these tests")


def make_url(kind: str, tmp_path) -> str:
    """A fresh, isolated namespace on ``kind``'s server for one test."""
    ns = "t" + uuid.uuid4().hex[:12]
    if kind == "sqlite":
        return f"sqlite:///{tmp_path / 'broker.db'}"
    require_server(kind)
    if kind == "redis":
        return f"{REDIS_URL}?prefix={ns}"
    if kind == "postgres":
        return f"{POSTGRES_URL}?schema={ns}"
    raise ValueError(kind)


@pytest.fixture(params=BROKERS)
def broker_kind(request) -> str:
    return request.param


@pytest.fixture
def broker_url(broker_kind, tmp_path) -> str:
    url = make_url(broker_kind, tmp_path)
    yield url
    if broker_kind == "postgres":
        _drop_pg_schema(url)
    elif broker_kind == "redis":
        _drop_redis_prefix(url)


def _drop_pg_schema(url: str) -> None:
    try:
        import psycopg
    except ImportError:
        return
    schema = url.rsplit("schema=", 1)[1]
    try:
        with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    except Exception:
        pass


def _drop_redis_prefix(url: str) -> None:
    try:
        import redis
    except ImportError:
        return
    prefix = url.rsplit("prefix=", 1)[1]
    try:
        r = redis.Redis.from_url(REDIS_URL)
        keys = list(r.scan_iter(match=f"*{prefix}*", count=1000))
        for i in range(0, len(keys), 500):
            r.delete(*keys[i : i + 500])
        r.close()
    except Exception:
        pass
