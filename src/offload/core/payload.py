"""Values and their wire form: which Python values travel in a task payload, and how.

A value arrives at the handler as it was sent, or it is refused at send with a reason
(docs/guide.md has the table). JSON-like values, bytes and datetimes in ``timezone.utc`` are
plain msgpack. tuple, set, frozenset, bytearray, Decimal, UUID, date, time, timedelta, other
datetimes (naive, a fixed offset, a ``zoneinfo`` zone), ints beyond 64 bits and dicts with
other keys are msgpack extension values tagged with their type, so they come back exactly
with or without a type hint, at any depth. Dataclasses, msgspec Structs, NamedTuples and
Enums travel as their fields or value and are rebuilt from type hints; the sender checks
that the hints rebuild them exactly (:func:`difference`).

A tag names one of the fixed types above, never a class: nothing is looked up by a name
read from a payload, and nothing is ever unpickled.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import decimal
import enum
import inspect
import sys
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import msgspec
from msgspec.msgpack import Ext

__all__ = [
    "MAX_DEPTH",
    "Refused",
    "difference",
    "ext_hook",
    "param_name",
    "rebuilt_difference",
    "to_wire",
]

MAX_DEPTH = 100  # containers nested deeper are refused at send, so any worker can decode them

# msgpack extension codes (0-127 are the application's). Codes are never reused.
_TUPLE, _SET, _FROZENSET, _DICT, _BYTEARRAY, _BIGINT = 1, 2, 3, 4, 5, 6
_DECIMAL, _UUID, _DATETIME, _DATE, _TIME, _TIMEDELTA = 7, 8, 9, 10, 11, 12

_INT_MIN, _INT_MAX = -(2**63), 2**64 - 1  # what msgpack holds as a plain int
_SCALARS = frozenset({str, float, bool, type(None), bytes})
_UTC = _dt.UTC
_BASES = (str, int, float, bytes, list, dict, tuple, set, frozenset, _dt.datetime, _dt.date)
_BASES += (_dt.time, _dt.timedelta, decimal.Decimal, uuid.UUID)


_enc = msgspec.msgpack.Encoder().encode  # for values already in wire form


class Refused(Exception):
    """A value that cannot travel; ``path`` grows as the walk unwinds (innermost last)."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        self.path: list[str] = []
        self.pos: int | str = 0  # which argument: its index, or its keyword


def _refusal(x: Any) -> str:
    t = type(x)
    for base in _BASES:
        if isinstance(x, base):
            return (
                f"a {t.__module__}.{t.__qualname__} (a subclass of {base.__name__}) would "
                f"arrive as a plain {base.__name__}; convert it before sending"
            )
    if t is memoryview:
        return "a memoryview cannot travel (it is a view); send bytes(value)"
    return (
        f"cannot send a {t.__module__}.{t.__qualname__} in a task payload: use "
        "JSON-compatible values, bytes, tuples, sets, Decimal, UUID, dates and times, "
        "or a dataclass, msgspec Struct, NamedTuple or Enum that the parameter's type hint "
        "names (offload never pickles)"
    )


def _tz_wire(tz: Any) -> Any:
    if tz is None:
        return None
    if type(tz) is _dt.timezone:
        off = tz.utcoffset(None)
        us = off // _dt.timedelta(microseconds=1)
        name = tz.tzname(None)
        return [us] if name == _dt.timezone(off).tzname(None) else [us, name]
    zoneinfo = sys.modules.get("zoneinfo")  # not imported: no ZoneInfo can exist
    if zoneinfo is not None and type(tz) is zoneinfo.ZoneInfo:
        if tz.key is not None:
            return tz.key
        raise Refused("a ZoneInfo made from a file has no key to send; use ZoneInfo(key)")
    raise Refused(
        f"a tzinfo of type {type(tz).__module__}.{type(tz).__qualname__} cannot travel "
        "exactly; use datetime.timezone (a fixed offset) or zoneinfo.ZoneInfo(key)"
    )


class _Wire:
    """One walk over a payload, turning values into their wire form. ``tagged``: some
    value needs an extension tag (envelope version 2); ``hinted``: some value relies on
    the parameter's type hint to be rebuilt."""

    __slots__ = ("hinted", "tagged")

    def __init__(self) -> None:
        self.tagged = False
        self.hinted = False

    def walk(self, x: Any, depth: int) -> Any:
        t = type(x)
        if t in _SCALARS:
            return x
        if t is int:
            if _INT_MIN <= x <= _INT_MAX:
                return x
            self.tagged = True
            return Ext(_BIGINT, x.to_bytes(x.bit_length() // 8 + 1, "big", signed=True))
        if t is _dt.datetime and x.tzinfo is _UTC:
            return x  # msgpack's own timestamp: exact, and readable by version 1 workers
        if depth >= MAX_DEPTH:
            raise Refused(
                f"nested more than {MAX_DEPTH} levels deep; flatten it, or store it "
                "elsewhere and send a reference"
            )
        depth += 1
        if t is list:
            return self._items(x, depth)
        if t is dict:
            return self._dict(x, depth)
        tag = _TAGGERS.get(t)
        if tag is not None:
            self.tagged = True
            return tag(self, x, depth)
        return self._other(x, depth)

    def _items(self, x: Any, depth: int) -> list[Any]:
        walk = self.walk
        i = 0
        try:
            out = []
            for i, item in enumerate(x):  # noqa: B007  (i names the failing item)
                out.append(walk(item, depth))
            return out
        except Refused as exc:
            exc.path.append(f"[{i}]")
            raise

    def _dict(self, x: dict, depth: int) -> Any:
        walk = self.walk
        key: Any = None
        try:
            if all(type(k) is str or (type(k) is int and _INT_MIN <= k <= _INT_MAX) for k in x):
                out = {}
                for key, value in x.items():
                    out[key] = walk(value, depth)
                return out
            self.tagged = True  # other keys: a tagged list of key, value, key, value...
            flat = []
            for key, value in x.items():
                flat.append(walk(key, depth))
                flat.append(walk(value, depth))
            return Ext(_DICT, _enc(flat))
        except Refused as exc:
            exc.path.append(f"[{key!r}]")
            raise

    def _other(self, x: Any, depth: int) -> Any:
        t = type(x)
        if t is decimal.Decimal:
            self.tagged = True
            return Ext(_DECIMAL, str(x).encode())
        if t is uuid.UUID:
            self.tagged = True
            return Ext(_UUID, x.bytes)
        # Rebuilt from the type hint: travel as the plain data msgspec.convert takes.
        if isinstance(x, enum.Enum):
            self.hinted = True
            return self.walk(x.value, depth)
        if isinstance(x, msgspec.Struct):
            self.hinted = True
            return self.walk(_struct_data(x), depth)
        if dataclasses.is_dataclass(x) and not isinstance(x, type):
            self.hinted = True
            fields = {f.name: getattr(x, f.name) for f in dataclasses.fields(x)}
            return self._dict(fields, depth)
        if isinstance(x, tuple) and hasattr(t, "_fields"):  # a NamedTuple
            self.hinted = True
            self.tagged = True
            return _tag_seq(self, x, depth, _TUPLE)
        raise Refused(_refusal(x))


def _struct_data(x: msgspec.Struct) -> Any:
    cfg = x.__struct_config__
    fields = msgspec.structs.fields(x)
    if cfg.array_like:
        out: Any = [getattr(x, f.name) for f in fields]
        return out if cfg.tag is None else [cfg.tag, *out]
    data = {} if cfg.tag is None else {cfg.tag_field: cfg.tag}
    for f in fields:
        value = getattr(x, f.name)
        if value is not msgspec.UNSET:
            data[f.encode_name] = value
    return data


def _tag_seq(w: _Wire, x: Any, depth: int, code: int) -> Ext:
    return Ext(code, _enc(w._items(x, depth)))


def _tag_datetime(w: _Wire, x: _dt.datetime, depth: int) -> Ext:
    fields = [x.year, x.month, x.day, x.hour, x.minute, x.second, x.microsecond, x.fold]
    return Ext(_DATETIME, _enc([*fields, _tz_wire(x.tzinfo)]))


def _tag_time(w: _Wire, x: _dt.time, depth: int) -> Ext:
    fields = [x.hour, x.minute, x.second, x.microsecond, x.fold, _tz_wire(x.tzinfo)]
    return Ext(_TIME, _enc(fields))


_TAGGERS: dict[type, Callable[[_Wire, Any, int], Ext]] = {
    tuple: lambda w, x, d: _tag_seq(w, x, d, _TUPLE),
    set: lambda w, x, d: _tag_seq(w, x, d, _SET),
    frozenset: lambda w, x, d: _tag_seq(w, x, d, _FROZENSET),
    bytearray: lambda w, x, d: Ext(_BYTEARRAY, bytes(x)),
    _dt.datetime: _tag_datetime,
    _dt.date: lambda w, x, d: Ext(_DATE, _enc(x.toordinal())),
    _dt.time: _tag_time,
    _dt.timedelta: lambda w, x, d: Ext(_TIMEDELTA, _enc([x.days, x.seconds, x.microseconds])),
}


def to_wire(
    args: list[Any], kwargs: dict[str, Any]
) -> tuple[list[Any], dict[str, Any], bool, list[int | str]]:
    """The wire form of a call's arguments, whether any value needed a tag, and the
    positions (index or keyword) of arguments holding values rebuilt from type hints.
    Raises :class:`Refused` with ``pos`` set to the failing argument."""
    w = _Wire()
    hinted: list[int | str] = []
    pos: int | str = 0
    try:
        out_args = []
        for pos, a in enumerate(args):
            w.hinted = False
            out_args.append(w.walk(a, 0))
            if w.hinted:
                hinted.append(pos)
        out_kwargs = {}
        for pos, a in kwargs.items():
            w.hinted = False
            out_kwargs[pos] = w.walk(a, 0)
            if w.hinted:
                hinted.append(pos)
    except (Refused, RecursionError) as exc:
        why = (  # a RecursionError only with a recursion limit far below MAX_DEPTH
            exc if isinstance(exc, Refused) else Refused("nested too deeply to encode here")
        )
        why.pos = pos
        raise why from None
    return out_args, out_kwargs, w.tagged, hinted


def _tz_from(v: Any) -> Any:
    if v is None:
        return None
    if isinstance(v, str):
        import zoneinfo  # only a payload holding a zone pays for the import

        return zoneinfo.ZoneInfo(v)
    return _dt.timezone(_dt.timedelta(microseconds=v[0]), *v[1:])


def _untag_datetime(v: list) -> _dt.datetime:
    *fields, fold, tz = v
    return _dt.datetime(*fields, fold=fold, tzinfo=_tz_from(tz))


def _untag_time(v: list) -> _dt.time:
    *fields, fold, tz = v
    return _dt.time(*fields, fold=fold, tzinfo=_tz_from(tz))


def _untag_dict(v: list) -> dict:
    if len(v) % 2:
        raise ValueError("odd number of keys and values")
    it = iter(v)
    return dict(zip(it, it, strict=True))


_UNTAGGERS: dict[int, tuple[str, bool, Callable[[Any], Any]]] = {
    # code: (name, data is msgpack, rebuild)
    _TUPLE: ("tuple", True, tuple),
    _SET: ("set", True, set),
    _FROZENSET: ("frozenset", True, frozenset),
    _DICT: ("dict", True, _untag_dict),
    _BYTEARRAY: ("bytearray", False, bytearray),
    _BIGINT: ("int", False, lambda b: int.from_bytes(b, "big", signed=True)),
    _DECIMAL: ("Decimal", False, lambda b: decimal.Decimal(bytes(b).decode("ascii"))),
    _UUID: ("UUID", False, lambda b: uuid.UUID(bytes=bytes(b))),
    _DATETIME: ("datetime", True, _untag_datetime),
    _DATE: ("date", True, _dt.date.fromordinal),
    _TIME: ("time", True, _untag_time),
    _TIMEDELTA: ("timedelta", True, lambda v: _dt.timedelta(*v)),
}


def ext_hook(code: int, data: memoryview) -> Any:
    entry = _UNTAGGERS.get(code)
    if entry is None:
        raise msgspec.DecodeError(
            f"unknown extension type {code} in the payload (written by a newer offload?); "
            "upgrade offload on this worker"
        )
    name, nested, rebuild = entry
    try:
        return rebuild(_value_decoder.decode(data) if nested else data)
    except msgspec.DecodeError:
        raise
    except Exception as exc:  # a malformed tag: the payload is bad, not the worker
        raise msgspec.DecodeError(f"malformed {name} in the payload: {exc}") from None


_value_decoder = msgspec.msgpack.Decoder(ext_hook=ext_hook)


def difference(sent: Any, got: Any, path: str = "") -> str | None:
    """Where ``got`` differs from ``sent`` in type or value, as a sentence, or None when it
    is the same data: ``==`` alone calls ``(1, 2)`` and ``[1, 2]`` different but ``1`` and
    ``True``, ``Color.RED`` and ``"red"``, or two datetimes with different offsets, equal."""
    ts, tg = type(sent), type(got)
    if ts is not tg:
        return f"{path or 'the value'} is a {_tname(ts)} but would arrive as a {_tname(tg)}"
    here = path or "the value"
    if ts in (list, tuple) or (issubclass(ts, tuple) and hasattr(ts, "_fields")):
        if len(sent) != len(got):
            return f"{here} has {len(sent)} items but would arrive with {len(got)}"
        for i, (a, b) in enumerate(zip(sent, got, strict=True)):
            if d := difference(a, b, f"{path}[{i}]"):
                return d
        return None
    if ts is dict:
        if list(sent) != list(got):
            return f"{here} has keys {list(sent)!r} but would arrive with {list(got)!r}"
        for (ka, a), (kb, b) in zip(sent.items(), got.items(), strict=True):
            if d := difference(ka, kb, f"{path} key {ka!r}") or difference(a, b, f"{path}[{ka!r}]"):
                return d
        return None
    if ts in (set, frozenset):
        if sent != got:
            return f"{here} is {sent!r} but would arrive as {got!r}"
        by_value = {x: x for x in got}
        for a in sent:
            if d := difference(a, by_value[a], f"{path} item {a!r}"):
                return d
        return None
    if isinstance(sent, msgspec.Struct):
        for f in msgspec.structs.fields(sent):
            a, b = getattr(sent, f.name), getattr(got, f.name)
            if d := difference(a, b, f"{path}.{f.name}"):
                return d
        return None
    if dataclasses.is_dataclass(sent):
        for f in dataclasses.fields(sent):
            a, b = getattr(sent, f.name), getattr(got, f.name)
            if d := difference(a, b, f"{path}.{f.name}"):
                return d
        return None
    if ts is float and sent != sent and got != got:  # NaN
        return None
    if ts is decimal.Decimal:
        same = sent.as_tuple() == got.as_tuple()
    elif ts in (_dt.datetime, _dt.time):
        same = (
            sent == got
            and sent.fold == got.fold
            and _tz_wire_or_none(sent.tzinfo) == _tz_wire_or_none(got.tzinfo)
        )
    else:
        same = sent == got
    return None if same else f"{here} is {sent!r} but would arrive as {got!r}"


def _tz_wire_or_none(tz: Any) -> Any:
    try:
        return _tz_wire(tz)
    except Refused:
        return tz


def _tname(t: type) -> str:
    return t.__qualname__ if t.__module__ == "builtins" else f"{t.__module__}.{t.__qualname__}"


def param_name(sig: inspect.Signature, pos: int | str) -> str:
    """The parameter an argument at ``pos`` (index or keyword) binds to, for messages."""
    if isinstance(pos, str):
        return pos
    params = list(sig.parameters.values())
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if pos < len(positional):
        return positional[pos].name
    star = [p.name for p in params if p.kind is p.VAR_POSITIONAL]
    return f"*{star[0]}[{pos - len(positional)}]" if star else f"#{pos}"


def rebuilt_difference(
    sig: inspect.Signature,
    sent: tuple[Sequence[Any], dict[str, Any]],
    got: tuple[Sequence[Any], dict[str, Any]],
    hinted: Sequence[int | str],
) -> tuple[str, str] | None:
    """(parameter, what went wrong) for the first argument at a ``hinted`` position that
    the worker would not rebuild as it was sent, or None when all come back the same."""
    s = sig.bind(*sent[0], **sent[1]).arguments
    g = sig.bind(*got[0], **got[1]).arguments
    var_kw = [p.name for p in sig.parameters.values() if p.kind is p.VAR_KEYWORD]
    names = {param_name(sig, p).partition("[")[0].lstrip("*") for p in hinted}
    for pname in sorted({n if n in s else var_kw[0] for n in names}):
        diff = difference(s[pname], g[pname], pname)
        if diff is not None:
            example = (
                f"`{pname}: {type(s[pname]).__qualname__}`"
                if diff.startswith(f"{pname} is")
                else f"`{pname}: list[Point]`, or a field `color: Color`"
            )
            return pname, (
                f"{diff}. Dataclasses, msgspec Structs, NamedTuples and Enums travel as plain "
                "data and are rebuilt from type hints: name their exact type in the "
                f"parameter's hint and in the fields that hold them (e.g. {example}), or "
                "send plain values"
            )
    return None
