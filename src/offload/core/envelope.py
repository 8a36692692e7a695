"""The task envelope: what a broker stores as opaque bytes, versioned and pickle-free.

The wire format is msgpack (via msgspec). Arguments arrive at the handler as they were
sent, or the send is refused with a :class:`PayloadError` naming the type, the argument and
what to do (:mod:`.payload` says how each type travels; docs/guide.md has the table).

Versions: an envelope whose values are all plain msgpack (JSON-like values, bytes,
datetimes in UTC) is written as version 1, which every offload reads. One holding a tagged
value (a tuple, a Decimal, a datetime with an offset...) is version 2, so a worker too old
to read the tags dead-letters it asking for an upgrade instead of running on wrong data.
"""

from __future__ import annotations

import datetime as _dt
import os
import time
from typing import Any

import msgspec

from ..errors import PayloadError
from . import payload as _payload

__all__ = [
    "ENVELOPE_VERSION",
    "ArgumentRefused",
    "Envelope",
    "decode",
    "encode",
    "encode_call",
    "new_id",
]

ENVELOPE_VERSION = 2  # the newest this code reads; it writes 1 unless a value needs a tag

# Well-known headers. Headers are open: any str -> str pair travels with the task.
DEADLINE = "deadline"  # absolute epoch seconds, as a decimal string
TRACE = "trace"


class Envelope(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One task as it travels. Fields are only ever added, with defaults (``v`` bumps on
    an incompatible change), so an older worker can still read what a newer sender wrote."""

    v: int = 1
    id: str
    task: str
    queue: str
    args: list[Any] = []
    kwargs: dict[str, Any] = {}
    name: str | None = None
    headers: dict[str, str] = {}
    sent_at: float = 0.0
    #: the sending App's name: a worker of another App on the same queue leaves it alone
    app: str = ""
    #: the sender's code version ($OFFLOAD_VERSION, else its package's): named in the log
    #: when a worker meets a task function it does not know (a newer deploy's?)
    version: str = ""


_FAST = frozenset({str, int, float, bool, type(None), bytes})  # the walk-free path


def _enc_hook(obj: Any) -> Any:
    # Only reached when an Envelope is encoded around the walk below (a bug, not input).
    raise PayloadError(f"cannot send a {type(obj).__qualname__} (offload never pickles)")


_encoder = msgspec.msgpack.Encoder(enc_hook=_enc_hook)


def encode(env: Envelope) -> bytes:
    """Encode an envelope; raises :class:`PayloadError` naming any value that can't travel."""
    return encode_call(env)[0]


class ArgumentRefused(PayloadError):
    """An argument that cannot travel: ``pos`` is its index or keyword, so the sender can
    name the parameter (:meth:`named`)."""

    def __init__(self, task: str, pos: int | str, path: str, reason: str) -> None:
        self.task, self.pos, self.path, self.reason = task, pos, path, reason
        where = f"#{pos}" if isinstance(pos, int) else pos
        super().__init__(f"task {task!r}: argument {where!r}{path}: {reason}")

    def named(self, name: str) -> PayloadError:
        """The same error, naming the argument by its parameter ``name``."""
        return PayloadError(f"{self.task}: argument {name!r}{self.path}: {self.reason}")


def encode_call(
    env: Envelope, _fast: frozenset = _FAST, _type: type = type
) -> tuple[bytes, tuple[int | str, ...]]:
    """Encode an envelope whose ``args``/``kwargs`` hold the caller's values. Returns the
    bytes and the positions (index or keyword) of arguments holding values rebuilt from
    type hints, which the sender must check (:func:`.payload.difference`). Raises
    :class:`ArgumentRefused` (a :class:`PayloadError`) for a value that cannot travel."""
    # The common call (a few str/int/float/bool/None/bytes) skips the walk: a type check
    # per argument, then msgspec.
    for a in env.args:
        if _type(a) not in _fast:
            return _encode_walked(env)
    if env.kwargs:
        for a in env.kwargs.values():
            if _type(a) not in _fast:
                return _encode_walked(env)
    try:
        return _encoder.encode(env), ()
    except OverflowError:  # an int beyond 64 bits: the walk tags it
        return _encode_walked(env)


def _encode_walked(env: Envelope) -> tuple[bytes, tuple[int | str, ...]]:
    try:
        args, kwargs, tagged, hinted = _payload.to_wire(env.args, env.kwargs)
    except _payload.Refused as exc:
        parts = exc.path[::-1]
        path = "".join(parts if len(parts) <= 8 else [*parts[:4], "...", *parts[-2:]])
        raise ArgumentRefused(env.task, exc.pos, path, exc.reason) from None
    wire = msgspec.structs.replace(env, args=args, kwargs=kwargs)
    if tagged:
        wire.v = max(wire.v, 2)
    try:
        return _encoder.encode(wire), tuple(hinted)
    except (TypeError, ValueError, OverflowError) as exc:
        raise PayloadError(f"task {env.task!r}: payload cannot be encoded: {exc}") from None


_decoder = msgspec.msgpack.Decoder(Envelope, ext_hook=_payload.ext_hook)


def decode(data: bytes) -> Envelope:
    """Decode stored bytes; raises ``msgspec.DecodeError``/``ValidationError`` on garbage,
    which the worker turns into a dead letter with the reason."""
    try:
        env = _decoder.decode(data)
    except RecursionError:
        raise msgspec.DecodeError("payload nested too deeply to decode") from None
    if env.v > ENVELOPE_VERSION:
        raise msgspec.ValidationError(
            f"envelope version {env.v} is newer than this worker understands "
            f"({ENVELOPE_VERSION}); upgrade offload on this worker"
        )
    return env


def new_id() -> str:
    """A 32-hex-digit id that sorts by creation time (UUIDv7 layout, no dashes)."""
    return f"{int(time.time() * 1000):012x}{os.urandom(10).hex()}"


def to_epoch(eta: _dt.datetime) -> float:
    """An aware datetime as epoch seconds; naive datetimes are refused (ambiguous)."""
    if not isinstance(eta, _dt.datetime):
        raise PayloadError(f"eta {eta!r}: must be a timezone-aware datetime")
    if eta.tzinfo is None or eta.utcoffset() is None:
        raise PayloadError(
            f"eta {eta!r}: naive datetime is ambiguous; pass an aware one, e.g. "
            "datetime.now(timezone.utc) + timedelta(seconds=5)"
        )
    return eta.timestamp()
