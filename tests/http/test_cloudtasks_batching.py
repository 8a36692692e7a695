"""Concurrent Cloud Tasks ``tasks.create`` requests share broker calls
(offload.http.batching), and each keeps its own answer: the task as stored, 409
ALREADY_EXISTS for a name taken (also by another request of the same batch, or by a task
that exists), 400 for its own bad field, 503 when the batch's broker call fails."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import time

import httpx

from offload import App
from offload.errors import BrokerUnavailable
from offload.http import create_app

TOKEN = "ct-batch"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
Q = "projects/p/locations/l/queues/hooks"


def make_app(url: str) -> App:
    a = App("ctbatch", broker=url)
    a.queue("hooks")
    return a


def counted(app: App, fail_call: int | None = None) -> list[int]:
    """Count the server's hops to the broker (the real broker still runs them); the
    ``fail_call``-th raises as an unreachable broker would, storing nothing."""
    calls: list[int] = []
    real = app.registry.call

    def call(op, **kw):
        calls.append(1)
        if fail_call is not None and len(calls) == fail_call:
            raise BrokerUnavailable("broker down (injected)")
        return real(op, **kw)

    app.registry.call = call
    return calls


def stamp(rfc3339: str) -> float:
    return dt.datetime.fromisoformat(rfc3339.replace("Z", "+00:00")).timestamp()


def task(url: str = "http://127.0.0.1:9/x", **extra) -> dict:
    body = base64.b64encode(b'{"n": 1}').decode()
    return {"task": {"httpRequest": {"url": url, "body": body}, **extra}}


async def burst(app: App, bodies: list[dict]) -> list[httpx.Response]:
    asgi = create_app(app, tokens=[TOKEN], parts=("cloudtasks",))
    transport = httpx.ASGITransport(app=asgi)
    async with httpx.AsyncClient(transport=transport, base_url="http://t", headers=AUTH) as c:
        return await asyncio.gather(*(c.post(f"/v2/{Q}/tasks", json=b) for b in bodies))


async def test_concurrent_creates_share_broker_calls_and_keep_their_own_answers(broker_url):
    app = make_app(broker_url)
    try:
        app.stats("hooks")  # declared before counting
        calls = counted(app)
        later = "2099-01-01T00:00:00Z"
        bodies = [task() for _ in range(20)]
        bodies += [task(name=f"{Q}/tasks/dup-{i % 4}") for i in range(8)]  # 4 names, twice
        bodies += [task(scheduleTime=later, name=f"{Q}/tasks/later")]
        bodies += [task(url="ftp://nowhere/")]  # its own 400, the others unharmed
        t0 = time.time()
        answers = await burst(app, bodies)
        t1 = time.time()
        codes = [r.status_code for r in answers]
        assert codes[:20] == [200] * 20, [r.text for r in answers if r.status_code != 200]
        for i in range(4):
            pair = sorted(codes[20 + k] for k in range(8) if k % 4 == i)
            assert pair == [200, 409], (i, codes[20:28])
        for r in answers[20:28]:
            if r.status_code == 409:
                assert r.json()["error"]["status"] == "ALREADY_EXISTS"
        assert codes[28:] == [200, 400]
        assert answers[29].json()["error"]["status"] == "INVALID_ARGUMENT"
        assert len(calls) < 25, f"one broker call per request: {len(calls)}"

        # each answer is the task as stored
        created = [r.json() for r in answers if r.status_code == 200]
        assert len({t["name"] for t in created}) == 25
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=create_app(app, tokens=[TOKEN])),
            base_url="http://t",
            headers=AUTH,
        ) as c:
            for t in created:
                got = (await c.get(f"/v2/{t['name']}")).json()
                assert got["name"] == t["name"] and got["httpRequest"] == t["httpRequest"]
                # the answer's createTime is the broker's clock read beside the enqueue
                assert abs(stamp(got["createTime"]) - stamp(t["createTime"])) < 1.0
                assert t["dispatchCount"] == 0 and t["responseCount"] == 0
        lt = next(t for t in created if t["name"].endswith("/later"))
        assert lt["scheduleTime"].startswith("2099-01-01T00:00:00")
        plain = created[0]
        assert plain["scheduleTime"] == plain["createTime"]
        assert t0 - 2 <= stamp(plain["createTime"]) <= t1 + 2

        # a name whose task exists is taken in a later batch too
        again = await burst(app, [task(name=f"{Q}/tasks/dup-0"), task(name=f"{Q}/tasks/new")])
        assert [r.status_code for r in again] == [409, 200]
        s = app.stats("hooks")
        assert s.ready + s.scheduled == 26
    finally:
        app.close()


async def test_a_failed_batch_answers_503_to_each_of_its_requests(broker_url):
    app = make_app(broker_url)
    try:
        app.stats("hooks")
        calls = counted(app, fail_call=1)
        answers = await burst(app, [task() for _ in range(12)])
        codes = [r.status_code for r in answers]
        failed = codes.count(503)
        assert failed >= 1 and codes.count(200) == 12 - failed, codes
        for r in answers:
            if r.status_code == 503:
                assert r.json()["error"]["status"] == "UNAVAILABLE"
        assert len(calls) <= 12 - failed + 1
        assert app.stats("hooks").ready == 12 - failed
    finally:
        app.close()
