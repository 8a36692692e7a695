"""Concurrent ``POST /api/v1/tasks`` share broker calls (offload.http.batching), and each
request still gets its own answer: 201, 409 for a name taken (also by another request of
the same batch), 503 when the batch's broker call fails."""

from __future__ import annotations

import asyncio

import httpx

from offload.errors import BrokerUnavailable
from offload.http import create_app

from .test_api import AUTH, TOKEN, make_app


def counted(app, fail_call: int | None = None) -> list[int]:
    """Record the size of every enqueue the server makes (the real broker still does it);
    the ``fail_call``-th one raises as an unreachable broker would, storing nothing."""
    sizes: list[int] = []
    real = app.registry.enqueue_async

    async def enqueue_async(tasks):
        sizes.append(len(tasks))
        if fail_call is not None and len(sizes) == fail_call:
            raise BrokerUnavailable("broker down (injected)")
        return await real(tasks)

    app.registry.enqueue_async = enqueue_async
    return sizes


async def burst(app, bodies: list[dict]) -> list[httpx.Response]:
    asgi = create_app(app, tokens=[TOKEN], parts=("api",))
    transport = httpx.ASGITransport(app=asgi)
    async with httpx.AsyncClient(transport=transport, base_url="http://t", headers=AUTH) as c:
        return await asyncio.gather(*(c.post("/api/v1/tasks", json=b) for b in bodies))


def body(**extra) -> dict:
    return {"task": "apiapp.send_email", "args": ["a@example.com"], **extra}


async def test_concurrent_creates_share_broker_calls_and_keep_their_own_answers(broker_url):
    app = make_app(broker_url)
    try:
        sizes = counted(app)
        bodies = [body() for _ in range(24)]
        bodies += [body(name=f"dup-{i % 4}") for i in range(8)]  # 4 names, each sent twice
        answers = await burst(app, bodies)
        codes = [r.status_code for r in answers]
        assert codes[:24] == [201] * 24, codes
        for i in range(4):
            pair = sorted(codes[24 + k] for k in range(8) if k % 4 == i)
            assert pair == [201, 409], (i, codes[24:])
        assert sum(sizes) == 32
        assert len(sizes) < 32, f"one broker call per request: {sizes}"
        ids = {r.json()["id"] for r in answers if r.status_code == 201}
        assert len(ids) == 28
        assert app.stats("emails").ready + app.stats("emails").scheduled == 28
    finally:
        app.close()


async def test_a_failed_batch_answers_503_to_each_of_its_requests(broker_url):
    app = make_app(broker_url)
    try:
        sizes = counted(app, fail_call=1)
        answers = await burst(app, [body() for _ in range(12)])
        failed = sizes[0]
        codes = sorted(r.status_code for r in answers)
        assert codes == [201] * (12 - failed) + [503] * failed, (sizes, codes)
        for r in answers:
            if r.status_code == 503:
                assert r.headers["retry-after"] == "1" and "injected" in r.text
        assert app.stats("emails").ready == 12 - failed
    finally:
        app.close()
