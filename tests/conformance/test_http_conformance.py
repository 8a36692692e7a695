"""What the HTTP face's task listings rely on from the brokers: a page of ``list_tasks`` costs
a page, not the whole queue (Redis keeps an id index for it), and stays right after acks,
deletes and purges and over data written before the index existed."""

from __future__ import annotations

import os
import secrets
import time
from urllib.parse import urlsplit, urlunsplit

import pytest

from offload.brokers import broker_from_url
from offload.brokers.base import NewTask
from offload.core.envelope import new_id
from offload.core.policy import QueuePolicy
from offload.testing.conformance_support import opened
from tests.conftest import make_url, require_server

#: whole-hash reads: a page that needs one of these reads every task of the queue
WHOLE_HASH = ("hkeys", "hgetall", "hvals", "hscan")


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
    return redis.Redis(host=parts.hostname, port=parts.port or 6379, db=int(parts.path[1:] or 0))


def _as_user(url: str, user: str, password: str) -> str:
    parts = urlsplit(url)
    netloc = f"{user}:{password}@{parts.hostname}:{parts.port or 6379}"
    return urlunsplit(parts._replace(netloc=netloc))


async def _fill(b, queue: str, n: int) -> list[str]:
    ids = sorted(new_id() for _ in range(n))
    for i in range(0, n, 5000):
        await b.enqueue([NewTask(id, queue, b"x") for id in ids[i : i + 5000]])
    return ids


async def test_a_redis_page_of_100k_tasks_reads_no_whole_hash(redis_url):
    """Listing page 1 (and a later page) of 100,000 tasks as a Redis user that may not run
    any whole-hash read: the page comes from the id index alone. Deterministic: the ACL
    refuses HKEYS inside the script, whatever the machine's speed."""
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
        async with opened(lambda: broker_from_url(_as_user(redis_url, user, password))) as limited:
            started = time.perf_counter()
            page = await limited.list_tasks(queue, limit=100)
            first = time.perf_counter() - started
            assert [r.id for r in page] == ids[:100]
            later = await limited.list_tasks(queue, limit=100, after=ids[50_000])
            assert [r.id for r in later] == ids[50_001:50_101]
            assert await limited.list_tasks(queue, after=ids[-1]) == []
        # the old whole-hash read took ~100 ms here; a page is a few ms even on a busy box
        assert first < (2.0 if os.environ.get("CI") else 5.0), first
    finally:
        raw.acl_deluser(user)
        raw.close()


async def test_redis_pages_stay_right_after_acks_deletes_purges_and_old_data(redis_url):
    queue = "paged"
    async with opened(lambda: broker_from_url(redis_url)) as b:
        await b.declare([QueuePolicy(queue, lease=30.0)])
        ids = await _fill(b, queue, 30)
        claimed = await b.claim([queue], 5)
        await b.ack([c.lease for c in claimed])
        gone = {c.id for c in claimed}
        assert await b.delete(queue, id=ids[-1])
        gone.add(ids[-1])
        left = [i for i in ids if i not in gone]

        async def listed() -> list[str]:
            seen, after = [], None
            while page := await b.list_tasks(queue, limit=7, after=after):
                seen += [r.id for r in page]
                after = page[-1].id
            return seen

        assert await listed() == left
        # data written before the index existed: the index is rebuilt on the next listing
        raw = _raw(redis_url)
        index = next(k for k in raw.scan_iter(match="*paged*:ids"))
        raw.delete(index)
        assert await listed() == left
        assert raw.zcard(index) == len(left)
        # an index entry whose task is gone is skipped and dropped, and the page still fills
        raw.zadd(index, {left[0] + "0": 0})
        raw.hset(index.replace(b":ids", b":tasks"), "~unindexed", b"")  # equal sizes again
        page = await b.list_tasks(queue, limit=3)
        assert [r.id for r in page] == left[:3]
        assert raw.zscore(index, left[0] + "0") is None
        raw.hdel(index.replace(b":ids", b":tasks"), "~unindexed")
        raw.close()
        assert await b.purge(queue) == len(left)
        assert await b.list_tasks(queue) == []
