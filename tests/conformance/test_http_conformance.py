"""What the HTTP face's task listings rely on from the brokers: a page of ``list_tasks`` costs
a page, not the whole queue, and following the page tokens gives every task once. On Redis
the listing scans the task hash with HSCAN (enqueue and ack keep no index for it): these
tests hold it to that with a Redis user denied every whole-hash read, with tasks acked
between pages, and over an id index an earlier version left behind."""

from __future__ import annotations

import os
import secrets
import time
from urllib.parse import urlsplit, urlunsplit

import pytest

from offload.brokers import broker_from_url
from offload.brokers.base import NewTask
from offload.brokers.pages import next_page_after
from offload.core.envelope import new_id
from offload.core.policy import QueuePolicy
from offload.errors import ConfigError
from offload.testing.conformance_support import opened
from tests.conftest import make_url, require_server

#: whole-hash reads: a page that needs one of these reads every task of the queue (HSCAN,
#: which reads a bounded batch a call, stays allowed)
WHOLE_HASH = ("hkeys", "hgetall", "hvals")


@pytest.fixture
def redis_url(tmp_path):
    require_server("redis")
    from tests.conftest import _drop_redis_prefix

    url = make_url("redis", tmp_path)
    yield url
    _drop_redis_prefix(url)


def _raw(url: str):
    import redis

    parts = urlsplit(url)
    db = int(parts.path[1:] or 0)
    return redis.Redis(
        host=parts.hostname,
        port=parts.port or 6379,
        db=db,
        username=parts.username,
        password=parts.password,
    )


def _as_user(url: str, user: str, password: str) -> str:
    parts = urlsplit(url)
    netloc = f"{user}:{password}@{parts.hostname}:{parts.port or 6379}"
    return urlunsplit(parts._replace(netloc=netloc))


def _key(url: str, queue: str, name: str) -> str:
    return f"{{{url.rsplit('prefix=', 1)[1]}:{queue}}}:{name}"


async def _fill(b, queue: str, n: int) -> list[str]:
    ids = [new_id() for _ in range(n)]
    for i in range(0, n, 5000):
        await b.enqueue([NewTask(id, queue, b"x") for id in ids[i : i + 5000]])
    return ids


async def _list_all(b, queue: str, limit: int, between=None) -> list[str]:
    """Every id over a full listing, following the page tokens; ``between(page)`` runs
    after each page but the last."""
    seen: list[str] = []
    after = None
    for _ in range(1_000_000):
        page = await b.list_tasks(queue, limit=limit, after=after)
        assert len(page) <= limit, f"limit={limit} returned {len(page)}"
        seen += [r.id for r in page]
        after = next_page_after(page, limit)
        if after is None:
            return seen
        if between is not None:
            await between(page)
    raise AssertionError("the listing never ended")


async def test_a_redis_listing_of_100k_tasks_reads_no_whole_hash(redis_url):
    """Page 1 of 100,000 tasks, then every page, as a Redis user that may not run a
    whole-hash read (HKEYS, HGETALL, HVALS; HSCAN allowed): page 1 holds at most the page
    size and comes back fast, and the pages give every id exactly once."""
    queue = "big"
    raw = _raw(redis_url)
    user, password = f"offload-test-{secrets.token_hex(4)}", secrets.token_hex(16)
    raw.acl_setuser(
        user,
        enabled=True,
        passwords=[f"+{password}"],
        keys=["*"],
        channels=["*"],
        commands=["+@all", *(f"-{c}" for c in WHOLE_HASH)],
    )
    try:
        async with opened(lambda: broker_from_url(redis_url)) as b:
            await b.declare([QueuePolicy(queue)])
            ids = await _fill(b, queue, 100_000)
        limited_url = _as_user(redis_url, user, password)
        import redis

        with pytest.raises(redis.exceptions.NoPermissionError):  # the ACL does refuse them
            _raw(limited_url).hkeys(_key(redis_url, queue, "tasks"))
        async with opened(lambda: broker_from_url(limited_url)) as limited:
            started = time.perf_counter()
            page = await limited.list_tasks(queue, limit=100)
            first = time.perf_counter() - started
            assert 0 < len(page) <= 100, len(page)
            assert next_page_after(page, 100) is not None
            seen = await _list_all(limited, queue, 1000)
        assert len(seen) == len(ids) and set(seen) == set(ids), (
            f"{len(seen)} ids listed, {len(set(seen))} distinct, of {len(ids)}"
        )
        # reading the whole hash took ~100 ms here; a page is a few ms even on a busy box
        assert first < (2.0 if os.environ.get("CI") else 5.0), first
    finally:
        raw.acl_deluser(user)
        raw.close()


@pytest.mark.parametrize("n, limit", [(3000, 50), (100, 7)], ids=["hashtable", "listpack"])
async def test_redis_pages_stay_right_while_tasks_are_acked(redis_url, n, limit):
    """Tasks acked and deleted between pages: none repeats, every task never removed comes
    back. 100 tasks are one listpack-encoded hash that HSCAN returns whole, so every page
    splits that batch; the task each page ended on is deleted before the next page."""
    queue = "paged"
    async with opened(lambda: broker_from_url(redis_url)) as b:
        await b.declare([QueuePolicy(queue, lease=30.0)])
        ids = await _fill(b, queue, n)
        removed: set[str] = set()
        encoding = _raw(redis_url).object("encoding", _key(redis_url, queue, "tasks"))
        assert encoding == (b"hashtable" if n > 128 else b"listpack"), encoding

        async def ack_some(page) -> None:
            claimed = await b.claim([queue], max(1, limit // 3))
            await b.ack([c.lease for c in claimed])
            removed.update(c.id for c in claimed)
            if page and page[-1].id not in removed:
                assert await b.delete(queue, id=page[-1].id)
                removed.add(page[-1].id)

        seen = await _list_all(b, queue, limit, ack_some)
        repeated = {i for i in seen if seen.count(i) > 1}
        assert not repeated, f"listed twice: {sorted(repeated)}"
        assert set(seen) <= set(ids)
        missing = set(ids) - removed - set(seen)
        assert not missing, f"{len(missing)} tasks never removed were not listed"
        assert len(removed) < n * 0.8, "the test must leave the hash unshrunk"


async def test_redis_ignores_and_then_frees_an_old_id_index(redis_url):
    """An id index an earlier version kept (``{P:Q}:ids``) is neither read nor written:
    enqueue and ack leave none, a listing ignores one left behind, purge and drop_queue
    delete it. A page token that is not the Redis broker's is a ConfigError."""
    queue = "old"
    raw = _raw(redis_url)
    index = _key(redis_url, queue, "ids")
    try:
        async with opened(lambda: broker_from_url(redis_url)) as b:
            await b.declare([QueuePolicy(queue, lease=30.0)])
            ids = await _fill(b, queue, 20)
            acked = await b.claim([queue], 2)
            await b.ack([c.lease for c in acked])
            assert not raw.exists(index), "the hot path wrote an id index"
            raw.zadd(index, {i: 0 for i in [*ids, "gone-1", "gone-2"]})
            left = set(ids) - {c.id for c in acked}
            listed = await _list_all(b, queue, 3)
            assert sorted(listed) == sorted(left), "the leftover index changed the listing"
            with pytest.raises(ConfigError, match="not a page token"):
                await b.list_tasks(queue, after=ids[5])  # a token of the id-ordered pages
            with pytest.raises(ConfigError, match="damaged"):
                await b.list_tasks(queue, after="r.0.0.0.eA")
            assert await b.purge(queue) == 18
            assert not raw.exists(index), "purge left the old index behind"
            raw.zadd(index, {"x": 0})
            assert await b.drop_queue(queue) == 0
            assert not raw.exists(index), "drop_queue left the old index behind"
    finally:
        raw.close()
