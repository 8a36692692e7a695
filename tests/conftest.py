"""Shared fixtures: one namespaced broker URL per test, on every broker the machine has.

Under ``CI=true`` a broker whose server cannot be reached fails the test; elsewhere the test
is skipped with the reason, so a laptop without Redis still runs the rest.
"""

from __future__ import annotations

import os
import socket
import uuid
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import pytest

REDIS_URL = os.environ.get("OFFLOAD_TEST_REDIS", "redis://127.0.0.1:6379/0")
POSTGRES_URL = os.environ.get("OFFLOAD_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

BROKERS = ["sqlite", "redis", "postgres"]


def _reachable(url: str, default_port: int) -> bool:
    """Whether a TCP connection to the host and port ``url`` names opens (a URL without a
    host, e.g. a PostgreSQL socket directory in ``?host=``, is left to the driver)."""
    parts = urlsplit(url)
    if not parts.hostname:
        return True
    try:
        with socket.create_connection((parts.hostname, parts.port or default_port), timeout=1):
            return True
    except OSError:
        return False


def require_server(kind: str) -> None:
    """Skip (laptop) or fail (CI) when ``kind``'s server is not reachable."""
    if kind == "redis":
        ok, where = _reachable(REDIS_URL, 6379), REDIS_URL
    elif kind == "postgres":
        ok, where = _reachable(POSTGRES_URL, 5432), POSTGRES_URL
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
        return _with_param(REDIS_URL, "prefix", ns)
    if kind == "postgres":
        return _with_param(POSTGRES_URL, "schema", ns)
    raise ValueError(kind)


def _with_param(url: str, key: str, value: str) -> str:
    """``url`` with ``key=value`` added to (or replacing it in) its query string."""
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != key]
    return urlunsplit(parts._replace(query=urlencode([*query, (key, value)])))


def _param(url: str, key: str) -> str:
    return dict(parse_qsl(urlsplit(url).query))[key]


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
    schema = _param(url, "schema")
    # The configured server and database, without offload's own query parameters.
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query) if k not in ("schema",)]
    conninfo = urlunsplit(parts._replace(query=urlencode(query)))
    try:
        with psycopg.connect(conninfo, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    except Exception:
        pass


def _drop_redis_prefix(url: str) -> None:
    try:
        import redis
    except ImportError:
        return
    prefix = _param(url, "prefix")
    parts = urlsplit(url)
    db = int(parts.path.strip("/") or 0)  # the configured database, as the broker reads it
    try:
        r = redis.Redis(
            host=parts.hostname or "127.0.0.1",
            port=parts.port or 6379,
            db=db,
            username=parts.username or None,
            password=parts.password or None,
            ssl=parts.scheme == "rediss",
        )
        keys = list(r.scan_iter(match=f"*{prefix}*", count=1000))
        for i in range(0, len(keys), 500):
            r.delete(*keys[i : i + 500])
        r.close()
    except Exception:
        pass
