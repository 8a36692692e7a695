"""Every row of the payload table in docs/guide.md, encoded and decoded: each value arrives
as it was sent (type, value, tzinfo, tuple vs list), bare, nested in containers, with and
without a type hint, or the send is refused with a PayloadError naming what to do.

``ROWS``, ``HINTED`` and ``REFUSED`` are shared with tests/integration/test_payload_roundtrip.py,
which sends the same rows through a real worker on every broker.
"""

from __future__ import annotations

import collections
import dataclasses
import datetime as dt
import decimal
import enum
import typing
import uuid
import zoneinfo
from typing import Any

import msgspec
import pytest

from offload import App, BadArguments, PayloadError
from offload.core import envelope, payload

UTC = dt.UTC
PARIS = zoneinfo.ZoneInfo("Europe/Paris")
NY = zoneinfo.ZoneInfo("America/New_York")


class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


class Level(enum.IntEnum):
    LOW = 1
    HIGH = 2


@dataclasses.dataclass
class Point:
    x: int
    y: int


@dataclasses.dataclass
class Event:
    """Fields typed ``Any`` hold tagged values, which need no hint."""

    at: dt.datetime
    extra: Any = None


class Money(msgspec.Struct, frozen=True):
    amount: decimal.Decimal
    currency: str


class Shape(msgspec.Struct, tag=True, array_like=True):
    sides: int
    corners: Any = None


class Pair(typing.NamedTuple):
    left: int
    right: str


class _Tz(dt.tzinfo):
    """A tzinfo that is neither datetime.timezone nor zoneinfo (as pytz's and dateutil's)."""

    def utcoffset(self, d):
        return dt.timedelta(hours=1)

    def dst(self, d):
        return dt.timedelta(0)

    def tzname(self, d):
        return "X"


class Name(str):
    pass


# (row id as in the guide's table, value, a type hint the handler may carry)
ROWS: list[tuple[str, Any, Any]] = [
    ("str", "héllo", str),
    ("int", 42, int),
    ("int 64-bit edges", [-(2**63), 2**64 - 1], list[int]),
    ("int beyond 64 bits", 2**200 + 1, int),
    ("negative int beyond 64 bits", -(2**64), int),
    ("float", -1.5e300, float),
    ("float nan/inf", [float("inf"), float("-inf")], list[float]),
    ("bool", True, bool),
    ("None", None, type(None)),
    ("bytes", b"\x00\xff", bytes),
    ("bytearray", bytearray(b"\x00\x01"), bytearray),
    ("list", [1, "a", None], list),
    ("tuple", (1, "a"), tuple[int, str]),
    ("empty tuple", (), tuple),
    ("dict", {"a": 1, 2: "b"}, dict),
    ("dict with other keys", {(1, 2): "t", None: 0, 1.5: "f", Color.RED.value: 1}, dict),
    ("set", {1, 2, 3}, set[int]),
    ("frozenset", frozenset({"a", "b"}), frozenset[str]),
    ("Decimal", decimal.Decimal("1.50"), decimal.Decimal),
    ("Decimal special", [decimal.Decimal("-0"), decimal.Decimal("NaN")], list[decimal.Decimal]),
    ("UUID", uuid.UUID("12345678-1234-5678-1234-567812345678"), uuid.UUID),
    ("datetime UTC", dt.datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=UTC), dt.datetime),
    (
        "datetime fixed offset",
        dt.datetime(2024, 5, 6, 7, 8, 9, 1, tzinfo=dt.timezone(dt.timedelta(hours=5, minutes=30))),
        dt.datetime,
    ),
    (
        "datetime named offset",
        dt.datetime(2024, 1, 1, tzinfo=dt.timezone(-dt.timedelta(hours=3), "BRT")),
        dt.datetime,
    ),
    ("datetime zoneinfo", dt.datetime(2024, 7, 1, 12, tzinfo=PARIS), dt.datetime),
    (
        "datetime zoneinfo fold",
        dt.datetime(2024, 11, 3, 1, 30, fold=1, tzinfo=NY),
        dt.datetime,
    ),
    ("datetime naive", dt.datetime(2024, 2, 29, 23, 59, 59, 999999), dt.datetime),
    ("date", dt.date(2024, 2, 29), dt.date),
    ("time", dt.time(23, 59, 1, 5), dt.time),
    ("time with offset", dt.time(8, 0, tzinfo=dt.timezone(dt.timedelta(hours=-7))), dt.time),
    ("timedelta", dt.timedelta(days=-1, seconds=5, microseconds=7), dt.timedelta),
]

# Rebuilt from the type hint: (row id, value, the hint that rebuilds it)
HINTED: list[tuple[str, Any, Any]] = [
    ("dataclass", Point(1, 2), Point),
    ("dataclass with tagged fields", Event(dt.datetime(2024, 1, 1, tzinfo=PARIS), (1, {2})), Event),
    ("msgspec Struct", Money(decimal.Decimal("9.90"), "EUR"), Money),
    ("tagged array-like Struct", Shape(3, ((0, 0), (1, 0), (0, 1))), Shape),
    ("NamedTuple", Pair(1, "a"), Pair),
    ("Enum", Color.BLUE, Color),
    ("IntEnum", Level.HIGH, Level),
    ("list of dataclasses", [Point(1, 2), Point(3, 4)], list[Point]),
    ("dict of Enums", {"a": Color.RED}, dict[str, Color]),
    ("optional dataclass", Point(0, 0), Point | None),
]

# Refused at send: (row id, value, the hint of the parameter, words the message must hold)
REFUSED: list[tuple[str, Any, Any, str]] = [
    ("other objects", object(), Any, r"builtins\.object.*never pickles"),
    ("subclass of a plain type", Name("x"), str, r"Name \(a subclass of str\).*convert it"),
    ("dict subclass", collections.OrderedDict(a=1), Any, r"OrderedDict.*plain dict"),
    ("memoryview", memoryview(b"x"), Any, r"memoryview.*bytes\(value\)"),
    ("other tzinfo", dt.datetime(2024, 1, 1, tzinfo=_Tz()), dt.datetime, r"_Tz.*ZoneInfo"),
    ("Enum without a hint", Color.RED, Any, r"Color but would arrive as a str.*hint"),
    ("dataclass without a hint", Point(1, 2), Any, r"Point but would arrive as a dict.*hint"),
    ("dataclass in list[Any]", [Point(1, 2)], list[Any], r"x\[0\] is a .*Point.*dict"),
    ("Enum in an Any field", Event(dt.datetime(2024, 1, 1), Color.RED), Event, r"x\.extra.*Color"),
    ("NamedTuple without a hint", Pair(1, "a"), Any, r"Pair but would arrive as a tuple"),
]


def _nest(value: Any, depth: int) -> list:
    out: list = [value]
    for _ in range(depth - 1):
        out = [out]
    return out


def _spelled(value: Any) -> Any:
    """The value's repr with every set's members sorted: a set's repr follows its table's
    order, which for equal sets built in a different order (a decoded one) can differ,
    at any depth."""
    if isinstance(value, (set, frozenset)):
        return (type(value).__name__, sorted(repr(_spelled(v)) for v in value))
    if isinstance(value, dict):
        return (type(value).__name__, [(_spelled(k), _spelled(v)) for k, v in value.items()])
    if isinstance(value, (list, tuple)) and type(value) in (list, tuple):
        return (type(value).__name__, [_spelled(v) for v in value])
    return repr(value)


def assert_same(sent: Any, got: Any) -> None:
    """Same type and same spelling (reprs spell out tuple vs list, tzinfo, fold, Decimal
    digits, Enum members), checked independently of payload.difference, and that too."""
    assert type(got) is type(sent), (sent, got)
    assert _spelled(got) == _spelled(sent), (sent, got)
    assert payload.difference(sent, got) is None


@pytest.fixture
def app():
    a = App("payloads")
    a.queue("q")
    yield a
    a.close()


def make_task(app: App, name: str, hint: Any = None) -> Any:
    """A task function ``fn(x)``, with ``x: hint`` when a hint is given."""

    def fn(x):
        return x

    fn.__name__ = name
    if hint is not None:
        fn.__annotations__ = {"x": hint}
    return app.task(name=name, queue="q")(fn)


def arrive(tf: Any, value: Any, *, keyword: bool = False) -> Any:
    """What the handler of ``tf`` would receive for ``value``: build, decode, convert."""
    new = tf.build((), {"x": value}) if keyword else tf.build((value,))
    env = envelope.decode(new.payload)
    args, kwargs = tf.convert_args(env.args, env.kwargs)
    return tf.signature.bind(*args, **kwargs).arguments["x"]


@pytest.mark.parametrize(("row", "value", "hint"), ROWS, ids=[r[0] for r in ROWS])
def test_row_arrives_exactly_without_a_hint(app, row, value, hint):
    tf = make_task(app, "bare")
    assert_same(value, arrive(tf, value))
    assert_same(value, arrive(tf, value, keyword=True))
    nested = {"k": [value, (value,)], "deep": _nest(value, 20)}
    assert_same(nested, arrive(tf, nested))


@pytest.mark.parametrize(("row", "value", "hint"), ROWS, ids=[r[0] for r in ROWS])
def test_row_arrives_exactly_with_a_hint(app, row, value, hint):
    tf = make_task(app, "typed", hint)
    assert_same(value, arrive(tf, value))
    assert_same(value, arrive(tf, value, keyword=True))


@pytest.mark.parametrize(("row", "value", "hint"), HINTED, ids=[r[0] for r in HINTED])
def test_hinted_row_is_rebuilt_from_its_hint(app, row, value, hint):
    tf = make_task(app, "typed", hint)
    assert_same(value, arrive(tf, value))
    assert_same(value, arrive(tf, value, keyword=True))


@pytest.mark.parametrize(("row", "value", "hint", "words"), REFUSED, ids=[r[0] for r in REFUSED])
def test_refused_row_names_type_argument_and_remedy(app, row, value, hint, words):
    tf = make_task(app, "refuses", hint)
    with pytest.raises(PayloadError, match=r"refuses: argument 'x'") as err:
        tf.build((value,))
    assert err.match(words)
    with pytest.raises(PayloadError, match=words):
        tf.build((), {"x": value})


def test_timezones_keep_their_offset_and_zone(app):
    tf = make_task(app, "tz")
    for sent in (ROWS[22][1], ROWS[24][1], ROWS[25][1]):
        got = arrive(tf, sent)
        assert got.utcoffset() == sent.utcoffset() and got.tzinfo == sent.tzinfo
        assert got.fold == sent.fold and got.tzname() == sent.tzname()
    assert arrive(tf, ROWS[26][1]).tzinfo is None


def test_only_tagged_payloads_need_a_newer_worker(app):
    tf = make_task(app, "v")
    plain = tf.build((["s", 1, 2.5, None, b"x", [1], {"a": dt.datetime.now(UTC)}],))
    assert msgspec.msgpack.decode(plain.payload)["args"][0][0] == "s"
    assert "v" not in msgspec.msgpack.decode(plain.payload)  # version 1, the default
    assert envelope.decode(plain.payload).v == 1
    tagged = tf.build(((1, 2),))
    assert envelope.decode(tagged.payload).v == 2 == envelope.ENVELOPE_VERSION
    typed = make_task(app, "p", Point)
    assert envelope.decode(typed.build((Point(1, 2),)).payload).v == 1  # hinted: plain map


# Written by the encoder before tagged values existed: args 's', 1, -2.5, True, None,
# b'\x00\xff', [1, [2]], {'k': {'n': 1}}, a UTC datetime, (1, 2); kwargs when=a +02:00
# datetime. That encoder flattened the tuple and moved the datetime to UTC; the bytes must
# still decode to what they held.
OLD_PAYLOAD = bytes.fromhex(
    "88a26964d9203030303030303030303030303030303030303030303030303030303030303030a474"
    "61736ba174a57175657565a171a4617267739aa17301cbc004000000000000c3c0c40200ff920191"
    "0281a16b81a16e01d7ff1d6f2800663881d9920102a66b776172677381a47768656ed6ff5e0bc4e0"
    "a46e616d65a16ea76865616465727381a57472616365a178a773656e745f6174cb3ff8000000000000"
)


def test_payloads_of_the_previous_encoder_still_decode():
    env = envelope.decode(OLD_PAYLOAD)
    assert (env.v, env.task, env.queue, env.name, env.headers) == (1, "t", "q", "n", {"trace": "x"})
    when = dt.datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=UTC)
    sent = ["s", 1, -2.5, True, None, b"\x00\xff", [1, [2]], {"k": {"n": 1}}, when, [1, 2]]
    assert_same(sent, env.args)
    assert_same({"when": dt.datetime(2019, 12, 31, 22, tzinfo=UTC)}, env.kwargs)


def test_deep_nesting_is_refused_at_send_not_a_recursion_error(app):
    tf = make_task(app, "deep")
    assert_same(_nest(1, payload.MAX_DEPTH), arrive(tf, _nest(1, payload.MAX_DEPTH)))
    deep: list = []
    inner = deep
    for _ in range(100_000):
        inner.append([])
        inner = inner[0]
    for value in (deep, {"a": deep}, (deep,)):
        with pytest.raises(PayloadError, match=r"deep: argument 'x'\[.*nested more than 100"):
            tf.build((value,))
    with pytest.raises(PayloadError, match="nested more than"):
        tf.build((_nest(1, payload.MAX_DEPTH + 1),))


def test_a_deep_payload_from_elsewhere_is_a_decode_error_not_a_crash():
    head = msgspec.msgpack.encode({"id": "x", "task": "t", "queue": "q"})  # a 3-entry map
    deep = b"\x84" + head[1:] + b"\xa4args" + b"\x91" * 100_000 + b"\xc0"  # 4 entries
    with pytest.raises(msgspec.DecodeError, match="nested too deeply"):
        envelope.decode(deep)


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [([1, 2], "got a list: \\[1, 2\\]"), ("ab", "got a str: 'ab'"), ("", "got a str"), (3, "int")],
)
def test_kwargs_that_are_not_a_mapping_are_bad_arguments(app, kwargs, words):
    tf = make_task(app, "kw")
    with pytest.raises(BadArguments, match=f"kw: kwargs must be a mapping.*{words}"):
        tf.build((), kwargs)
    with pytest.raises(BadArguments, match="kwargs must be a mapping"):
        tf.send_with(kwargs=kwargs)
    with pytest.raises(BadArguments, match=r"call #0: .*kwargs must be a mapping"):
        tf.send_many([((), kwargs)])


@pytest.mark.parametrize(
    ("code", "data", "words"),
    [
        (99, b"", "unknown extension type 99.*upgrade"),
        (7, b"not a number", "malformed Decimal"),
        (1, b"\xc1", "malformed tuple|invalid"),
        (2, msgspec.msgpack.encode([[1]]), "malformed set.*unhashable"),
        (9, msgspec.msgpack.encode([2024]), "malformed datetime"),
    ],
)
def test_malformed_tags_are_decode_errors(code, data, words):
    raw = msgspec.msgpack.encode(
        {"v": 2, "id": "x", "task": "t", "queue": "q", "args": [msgspec.msgpack.Ext(code, data)]}
    )
    with pytest.raises(msgspec.DecodeError, match=words):
        envelope.decode(raw)


@dataclasses.dataclass
class Positive:
    n: int

    def __post_init__(self) -> None:
        if self.n <= 0:
            raise RuntimeError(f"n must be positive, got {self.n}")


def test_conversion_failures_on_the_worker_are_bad_arguments(app):
    """What the worker dead-letters: a payload that decodes but does not fit the hints."""
    tf = make_task(app, "conv", Point)
    with pytest.raises(BadArguments, match=r"conv: argument 'x': Expected `object`, got `str`"):
        tf.convert_args(["not a point"], {})
    with pytest.raises(BadArguments, match=r"conv\(x: .*Point\): too many positional"):
        tf.convert_args([{"x": 1, "y": 2}, 2], {})
    pos = make_task(app, "pos", Positive)
    with pytest.raises(BadArguments, match=r"building Positive.*RuntimeError: n must be positive"):
        pos.convert_args([{"n": 0}], {})
    with pytest.raises(BadArguments, match=r"n must be positive.*the worker would refuse"):
        pos.build((_bypass_post_init(Positive, n=-1),))


def _bypass_post_init(cls: type, **fields: Any) -> Any:
    obj = object.__new__(cls)
    obj.__dict__.update(fields)
    return obj


def test_difference_is_strict_about_types():
    assert payload.difference([1, 2], (1, 2)) is not None
    assert payload.difference(1, True) is not None
    assert payload.difference(Color.RED, "red") is not None
    assert payload.difference(decimal.Decimal("1.5"), decimal.Decimal("1.50")) is not None
    a = dt.datetime(2024, 1, 1, 12, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    assert payload.difference(a, a.astimezone(UTC)) is not None
    assert payload.difference({"k": {1}}, {"k": {True}}) is not None
    assert payload.difference([float("nan")], [float("nan")]) is None
    assert payload.difference(Point(1, 2), Point(1, 2)) is None
