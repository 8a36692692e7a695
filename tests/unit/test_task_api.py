"""Sending validates on the caller's side: bad input fails at once, names the problem,
and enqueues nothing."""

from __future__ import annotations

import dataclasses
import datetime as dt

import pytest

from offload import App, BadArguments, PayloadError, UnknownQueue
from offload.core import envelope


@pytest.fixture
def app(tmp_path):
    a = App("t", broker=f"sqlite:///{tmp_path / 'x.db'}")
    a.queue("emails", rate="20/s")
    yield a


def test_task_names_default_to_module_qualname(app):
    @app.task(name="custom")
    def f(x: int) -> None: ...

    assert f.name == "custom" and f.queue == "default"
    assert app.get_task("custom") is f
    assert f(2) is None  # calling runs it here


def test_local_functions_need_a_name(app):
    with pytest.raises(Exception, match="inside a function"):

        @app.task
        def inner(): ...


@pytest.mark.parametrize(
    ("args", "kwargs", "needle"),
    [
        ((), {}, "missing 1 required positional argument: 'to'"),
        (("a", "b", "c"), {}, "takes from 1 to 2 positional arguments but 3 were given"),
        (("a",), {"nope": 1}, "unexpected keyword"),
    ],
)
def test_bad_arguments_fail_at_send(app, args, kwargs, needle):
    @app.task(queue="emails", name="send_email")
    def send_email(to: str, subject: str = "") -> None: ...

    with pytest.raises(BadArguments, match=needle) as info:
        send_email.build(args, kwargs)
    assert "send_email(to: str, subject: str = '')" in str(info.value)


def test_unknown_queue(app):
    @app.task(queue="nope", name="t1")
    def t1() -> None: ...

    with pytest.raises(UnknownQueue, match=r"'nope' is not declared.*default, emails"):
        t1.build()


def test_unencodable_payload_is_refused_with_its_type(app):
    @app.task(name="t2")
    def t2(x) -> None: ...

    class Thing: ...

    with pytest.raises(PayloadError, match=r"Thing.*never pickles"):
        t2.build((Thing(),))


def test_naive_eta_is_refused(app):
    @app.task(name="t3")
    def t3() -> None: ...

    with pytest.raises(PayloadError, match="naive datetime"):
        t3.build(eta=dt.datetime.now())
    with pytest.raises(BadArguments, match="delay or eta"):
        t3.build(delay=1, eta=dt.datetime.now(dt.UTC))
    with pytest.raises(BadArguments, match="delay -1"):
        t3.build(delay=-1)


@dataclasses.dataclass
class Point:
    x: int
    y: int


def test_typed_arguments_round_trip(app):
    @app.task(name="t4")
    def t4(p: Point, when: dt.datetime, blob: bytes, n: int = 0) -> None: ...

    now = dt.datetime.now(dt.UTC)
    new = t4.build((Point(1, 2), now, b"\x00\xff"), {"n": 3})
    env = envelope.decode(new.payload)
    args, kwargs = t4.convert_args(env.args, env.kwargs)
    bound = t4.signature.bind(*args, **kwargs).arguments
    assert bound == {"p": Point(1, 2), "when": now, "blob": b"\x00\xff", "n": 3}


def test_envelope_rejects_garbage_and_newer_versions():
    import msgspec

    with pytest.raises(msgspec.DecodeError):
        envelope.decode(b"\xc1garbage")
    newer = msgspec.msgpack.encode({"v": 99, "id": "x", "task": "t", "queue": "q"})
    with pytest.raises(msgspec.ValidationError, match="newer"):
        envelope.decode(newer)


def test_bad_app_settings():
    from offload import ConfigError
    from offload.errors import BrokerURLError

    with pytest.raises(BrokerURLError, match="unknown scheme 'mysql'"):
        App("x", broker="mysql://h/db")
    with pytest.raises(BrokerURLError, match="scheme://"):
        App("x", broker="offload.db")
    with pytest.raises(ConfigError, match="app name"):
        App("bad name")
    a = App("x", broker="sqlite:///x.db")
    with pytest.raises(Exception, match="rate 'fast'"):
        a.queue("q", rate="fast")
