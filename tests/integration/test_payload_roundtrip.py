"""Every row of the payload table (docs/guide.md), sent through a real worker on every
broker: the handler receives exactly what was sent (type and value, tzinfo and offset,
tuple vs list), bare, nested in containers, with and without a type hint; refused rows
never reach the broker; a payload that decodes but does not fit the handler's hints is
dead-lettered with the reason, and the worker goes on."""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
import pytest

from offload import App, PayloadError
from offload.brokers import broker_from_url
from offload.brokers.base import NewTask
from offload.core import envelope
from offload.testing.apps import run_until_idle
from tests.unit.test_payload_types import HINTED, REFUSED, ROWS, Point, Positive, assert_same

pytestmark = pytest.mark.timeout(120)


def _task(app: App, name: str, hint: Any, seen: dict[str, Any]) -> Any:
    def fn(x, key: str) -> None:
        seen[key] = x

    fn.__name__ = name
    if hint is not None:
        fn.__annotations__ = {"x": hint, "key": str}
    return app.task(name=name, queue="q")(fn)


def test_every_row_arrives_exactly_through_a_worker(broker_url):
    app = App("roundtrip", broker=broker_url)
    app.queue("q")
    seen: dict[str, Any] = {}
    sent: dict[str, Any] = {}
    bare = _task(app, "bare", None, seen)
    for i, (row, value, hint) in enumerate(ROWS):
        typed = _task(app, f"typed{i}", hint, seen)
        nested = {"k": [value, (value,)], "set": frozenset([(row, 1)]), "deep": [[[value]]]}
        for key, tf, v in [
            (f"{row}/bare", bare, value),
            (f"{row}/nested", bare, nested),
            (f"{row}/typed", typed, value),
        ]:
            tf.send(v, key=key)
            sent[key] = v
        bare.send_with(kwargs={"x": value, "key": f"{row}/keyword"})
        sent[f"{row}/keyword"] = value
    for i, (row, value, hint) in enumerate(HINTED):
        _task(app, f"hinted{i}", hint, seen).send(value, key=f"{row}/hinted")
        sent[f"{row}/hinted"] = value
    for i, (row, value, hint, words) in enumerate(REFUSED):
        refuses = _task(app, f"refused{i}", hint, seen)
        with pytest.raises(PayloadError, match=words):
            refuses.send(value, key=row)
    assert app.stats("q").ready == len(sent)  # nothing of the refused rows was enqueued

    stats = run_until_idle(app)
    assert stats.succeeded == len(sent), app.dead_letters("q")
    assert set(seen) == set(sent)
    for key, value in sent.items():
        assert_same(value, seen[key])
    app.close()


def _raw(task: str, args: list[Any], v: int = 1) -> bytes:
    return msgspec.msgpack.encode(
        {"v": v, "id": "x", "task": task, "queue": "q", "args": args, "app": "badfit"}
    )


def test_payloads_that_do_not_fit_are_dead_lettered_with_the_reason(broker_url):
    """Written by hand, as an older or foreign sender might: each decodes (or not), none
    fits the handler; each is dead-lettered at once, and the good task behind them runs."""
    app = App("badfit", broker=broker_url)
    app.queue("q")
    ran: list[Any] = []

    @app.task(name="point", queue="q")
    def point(p: Point) -> None:
        ran.append(p)

    @app.task(name="positive", queue="q")
    def positive(p: Positive) -> None:
        ran.append(p)

    bad = {
        "notamap": (_raw("point", ["not a point"]), "BadArguments: point: argument 'p'"),
        "toomany": (_raw("point", [{"x": 1, "y": 2}, 3]), "too many positional arguments"),
        "postinit": (_raw("positive", [{"n": -1}]), "RuntimeError: n must be positive"),
        "badtag": (
            _raw("point", [msgspec.msgpack.Ext(7, b"x")], v=2),
            "undecodable payload: malformed Decimal",
        ),
        "unknowntag": (
            _raw("point", [msgspec.msgpack.Ext(99, b"")], v=2),
            "undecodable payload: unknown extension type 99",
        ),
        "newer": (_raw("point", [], v=3), "undecodable payload: envelope version 3 is newer"),
    }

    async def enqueue() -> None:
        b = broker_from_url(broker_url)
        await b.open()
        await b.enqueue([NewTask(tid, "q", data) for tid, (data, _) in bad.items()])
        await b.close()

    app.open()  # creates the broker's schema and declares the queue
    asyncio.run(enqueue())
    point.send(Point(5, 6))
    run_until_idle(app)
    assert ran == [Point(5, 6)]
    dead = {d.id: d for d in app.dead_letters("q")}
    assert set(dead) == set(bad)
    for tid, (_, words) in bad.items():
        assert words in dead[tid].error, (tid, dead[tid].error)
        assert dead[tid].attempts == 1, (tid, dead[tid])
    assert envelope.ENVELOPE_VERSION == 2
    app.close()
