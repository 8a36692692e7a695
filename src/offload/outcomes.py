"""How a task's outcome travels back to whoever asked for it: the headers that ask, the
outcome's encoding, and what a worker stores for a finished task (see :mod:`offload.calls`
for the whole path of a result; :mod:`offload.replies` for the caller's listener).

Outcomes travel as msgpack with the arguments' own codec (:mod:`offload.core.payload`), so
a result comes back as it was returned; one that cannot travel becomes a failed outcome of
type ``offload.errors.PayloadError``. Kept apart from :mod:`offload.calls` because a worker
needs this and nothing of the caller's side.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgspec

from .brokers.base import MAX_RESULT_TTL
from .core import envelope as _env
from .core import payload as _payload
from .errors import RemoteError

__all__ = [
    "REPLY_TO",
    "RESULT_TTL",
    "EncodedOutcome",
    "Outcome",
    "decode_outcome",
    "encode_outcome",
    "failure_outcome",
    "past_deadline",
    "reply_for",
    "result_ttl",
    "unrun_headers",
    "wants_result",
]

#: header: the caller process's reply channel
REPLY_TO = "reply-to"
#: header: seconds the result is kept once stored
RESULT_TTL = "result-ttl"


class Outcome(msgspec.Struct, array_like=True, omit_defaults=True):
    """How a task ended, as stored for its caller: its value, or the error it raised."""

    ok: bool
    value: Any = None
    type: str = ""
    message: str = ""
    traceback: str = ""

    def unwrap(self, task: str, task_id: str) -> Any:
        """The value, or :class:`RemoteError` carrying the remote type, message and
        traceback."""
        if self.ok:
            return self.value
        what = f"{self.type}: {self.message}" if self.type else self.message
        raise RemoteError(
            f"{task} (task {task_id}) failed: {what}",
            type=self.type,
            message=self.message,
            traceback=self.traceback,
        )


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Outcome, ext_hook=_payload.ext_hook)


def encode_outcome(value: Any, task: str) -> bytes:
    """A handler's return value, encoded like an argument; a value that cannot travel
    becomes a failed outcome saying so (the task itself succeeded and is acked)."""
    try:
        args, _, _, _ = _payload.to_wire([value], {})
        return _encoder.encode(Outcome(True, args[0]))
    except (_payload.Refused, TypeError, ValueError, OverflowError) as exc:
        reason = getattr(exc, "reason", None) or str(exc)
        return _encoder.encode(
            Outcome(
                False,
                type="offload.errors.PayloadError",
                message=f"{task} returned a value that cannot travel back to its caller: "
                f"{reason}; return plain data (see the payload types in docs/guide.md)",
            )
        )


def failure_outcome(error: str, traceback: str) -> bytes:
    """A failed outcome from a verdict's error text (``Type: message``)."""
    kind, sep, message = error.partition(": ")
    if not sep or " " in kind:
        kind, message = "", error
    return _encoder.encode(Outcome(False, type=kind, message=message, traceback=traceback))


def decode_outcome(data: bytes) -> Outcome:
    """Stored bytes back into an Outcome; bytes that do not decode are a RemoteError."""
    try:
        return _decoder.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        return Outcome(False, type="offload.errors.PayloadError", message=f"bad result: {exc}")


def wants_result(headers: Mapping[str, str]) -> bool:
    """Whether the sender asked for this task's result to be stored."""
    return RESULT_TTL in headers


def result_ttl(headers: Mapping[str, str]) -> float:
    """The TTL the sender asked for, within what brokers keep (a bad one: a minute)."""
    try:
        ttl = float(headers[RESULT_TTL])
    except (KeyError, TypeError, ValueError):
        return 60.0
    return ttl if 0 < ttl <= MAX_RESULT_TTL else min(MAX_RESULT_TTL, 60.0)


def past_deadline(headers: Mapping[str, str], now: float) -> bool:
    """Whether the task's deadline header is before ``now`` (the broker's clock at claim)."""
    raw = headers.get(_env.DEADLINE)
    if raw is None:
        return False
    try:
        return float(raw) < now
    except (TypeError, ValueError):
        return False


class _Addressed(msgspec.Struct):
    """The part of an envelope a worker needs to answer a task it never ran: its headers.
    Every other field is skipped, not decoded, so arguments that do not decode (or a
    newer envelope version) do not stop the caller from hearing why."""

    headers: dict[str, str] = {}


_addressed = msgspec.msgpack.Decoder(_Addressed)


def unrun_headers(payload: bytes | None) -> Mapping[str, str]:
    """The headers of a claimed task's payload, or none when even they do not decode."""
    if payload is None:
        return {}
    try:
        return _addressed.decode(payload).headers
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):
        return {}


class EncodedOutcome(bytes):
    """An outcome already encoded by :func:`encode_outcome` where the handler ran (a
    process-executor child): stored as it is, not decoded and encoded again, and a value
    the child could not encode keeps the child's reason."""


def reply_for(
    info: Any, verdict: Any, payload: bytes | None = None
) -> tuple[bytes, float, str | None] | None:
    """What a worker stores for a finished task whose sender wants its result: the
    outcome, its TTL and the reply channel; None when the task will run again (a retry
    keeps the caller waiting) or nobody asked.

    ``info`` is None for a claim dead-lettered before it ran (bad arguments, a payload
    that does not decode, an unknown task function, a retry policy exhausted by workers
    that died): there is no TaskInfo, so the headers are read from its ``payload``, and
    its caller gets RemoteError with the reason now rather than DeadlineExceeded later."""
    if info is None:
        if verdict.kind != "dead":
            return None
        headers = unrun_headers(payload)
        if RESULT_TTL not in headers:
            return None
        data = failure_outcome(verdict.error, verdict.traceback)
        return data, result_ttl(headers), headers.get(REPLY_TO)
    if verdict.kind == "ack":
        value = info._result
        if isinstance(value, EncodedOutcome):  # a process-executor child encoded it
            data = bytes(value)
        else:
            data = encode_outcome(value, info.task)
    elif verdict.kind == "dead":
        data = failure_outcome(verdict.error, verdict.traceback)
    else:
        return None
    return data, result_ttl(info.headers), info.headers.get(REPLY_TO)
