"""The task envelope: what a broker stores as opaque bytes, versioned and pickle-free.

The wire format is msgpack (via msgspec), so bytes and datetimes survive the trip exactly,
while everything else stays JSON-compatible. Objects that msgpack would flatten silently
(arbitrary classes) are refused at send time with a :class:`PayloadError` that names them;
msgspec Structs and dataclasses are accepted and travel as maps, rebuilt on the worker from
the task function's type hints.
"""

from __future__ import annotations

import datetime as _dt
import os
import time
from typing import Any

import msgspec

from ..errors import PayloadError

__all__ = ["ENVELOPE_VERSION", "Envelope", "decode", "encode", "new_id"]

ENVELOPE_VERSION = 1

# Well-known headers. Headers are open: any str -> str pair travels with the task.
DEADLINE = "deadline"  # absolute epoch seconds, as a decimal string
TRACE = "trace"


class Envelope(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One task as it travels. Fields are only ever added, with defaults (``v`` bumps on
    an incompatible change), so an older worker can still read what a newer sender wrote."""

    v: int = ENVELOPE_VERSION
    id: str
    task: str
    queue: str
    args: list[Any] = []
    kwargs: dict[str, Any] = {}
    name: str | None = None
    headers: dict[str, str] = {}
    sent_at: float = 0.0


def _enc_hook(obj: Any) -> Any:
    raise PayloadError(
        f"cannot send a {type(obj).__module__}.{type(obj).__qualname__} in a task payload: "
        "use JSON-compatible values (str, int, float, bool, None, list, dict), bytes, "
        "datetimes, dataclasses or msgspec Structs (offload never pickles)"
    )


_encoder = msgspec.msgpack.Encoder(enc_hook=_enc_hook)
_decoder = msgspec.msgpack.Decoder(Envelope)


def encode(env: Envelope) -> bytes:
    """Encode an envelope; raises :class:`PayloadError` naming any value that can't travel."""
    try:
        return _encoder.encode(env)
    except PayloadError:
        raise
    except (TypeError, ValueError, OverflowError) as exc:
        raise PayloadError(f"task {env.task!r}: payload cannot be encoded: {exc}") from None


def decode(data: bytes) -> Envelope:
    """Decode stored bytes; raises ``msgspec.DecodeError``/``ValidationError`` on garbage,
    which the worker turns into a dead letter with the reason."""
    env = _decoder.decode(data)
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
