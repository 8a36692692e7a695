"""The Cloud Tasks v2 resources as JSON (protobuf's JSON mapping: camelCase fields,
durations as "3.5s", RFC 3339 timestamps, base64 bytes, enums as names or, on request, as
integers) and offload's values behind them; pure, no I/O. The routes are in
:mod:`.cloudtasks`."""

from __future__ import annotations

import base64
import binascii
import dataclasses
import re
from datetime import UTC, datetime
from typing import Any

from ..app import PUSH_TASK
from ..brokers.base import QueueStats, TaskRecord
from ..core import envelope as _env
from ..core.policy import QueuePolicy, RetryPolicy
from ..errors import OffloadError
from ..push import METHODS

__all__ = [
    "PRECONDITION",
    "STATUS",
    "TASK_ID",
    "ApiError",
    "apply_queue",
    "as_bytes",
    "camel",
    "page_size",
    "queue_json",
    "seconds",
    "task_json",
    "timestamp",
    "view",
]

TASK_ID = re.compile(r"[A-Za-z0-9_-]{1,500}")
STATUS = {400: "INVALID_ARGUMENT", 404: "NOT_FOUND", 405: "UNIMPLEMENTED", 409: "ALREADY_EXISTS"}
STATUS |= {501: "UNIMPLEMENTED", 503: "UNAVAILABLE"}
PRECONDITION = "FAILED_PRECONDITION"  # sent as HTTP 400, as Google does
_RUNNING, _PAUSED = 1, 2
_PAGE = 1000  # the largest page, as Google's
_RATE = ("maxDispatchesPerSecond", "maxBurstSize", "maxConcurrentDispatches")
_RETRY = ("maxAttempts", "maxRetryDuration", "minBackoff", "maxBackoff", "maxDoublings")
_FIELDS = {f"rateLimits.{f}" for f in _RATE} | {f"retryConfig.{f}" for f in _RETRY}


class ApiError(OffloadError):
    """A request this surface refuses, with its HTTP code (and Google status)."""

    def __init__(self, code: int, message: str, status: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.status = status or STATUS.get(code, "UNKNOWN")


def queue_json(name: str, p: QueuePolicy, stats: QueueStats, ints: bool) -> dict[str, Any]:
    """A Queue resource: ``p`` as rate limits and retry config, ``stats`` as its state."""
    rate: dict[str, Any] = {}
    if p.rate is not None:
        rate["maxDispatchesPerSecond"] = p.rate
        rate["maxBurstSize"] = int(p.bucket)
    if p.max_concurrent is not None:
        rate["maxConcurrentDispatches"] = p.max_concurrent
    r = p.retry
    state = _PAUSED if stats.paused else _RUNNING
    return {
        "name": name,
        "rateLimits": rate,
        "retryConfig": {
            "maxAttempts": -1 if r.limit is None else r.limit + 1,
            "maxRetryDuration": _duration(r.age_limit or 0.0),
            "minBackoff": _duration(r.min_backoff),
            "maxBackoff": _duration(r.max_backoff),
            "maxDoublings": r.max_doublings,
        },
        "state": state if ints else ("RUNNING", "PAUSED")[state - 1],
    }


def apply_queue(p: QueuePolicy, body: dict, paths: set[str] | None) -> tuple[QueuePolicy, bool]:
    """``p`` with the fields of a Cloud Tasks queue body: those in ``paths`` (an update
    mask, camelCase), or every field the body has; and whether any ``retryConfig`` field
    was among them (an explicit change of the retry policy, stored as an override)."""
    given = {}
    for group, fields in (("rateLimits", _RATE), ("retryConfig", _RETRY)):
        section = body.get(group) or {}
        if not isinstance(section, dict):
            raise ApiError(400, f"queue.{group} must be an object")
        for f in fields:
            section.setdefault(f, section.pop(_snake(f), None))
            given[f"{group}.{f}"] = section.get(f)
    if paths is None:
        paths = {k for k, v in given.items() if v is not None}
    else:
        for group in ("rateLimits", "retryConfig"):
            if group in paths:
                paths = (paths - {group}) | {k for k in _FIELDS if k.startswith(group + ".")}
        bad = paths - _FIELDS
        if bad:
            raise ApiError(400, f"updateMask: cannot update {sorted(bad)}; use {sorted(_FIELDS)}")
    rate, bucket, conc = p.rate, p.bucket_size, p.max_concurrent
    r = dataclasses.asdict(p.retry)
    for path in paths:
        v = given[path]
        field = path.split(".")[1]
        if field == "maxDispatchesPerSecond":
            rate = _number(path, v) or None
        elif field == "maxBurstSize":
            bucket = int(_number(path, v)) or None
        elif field == "maxConcurrentDispatches":
            conc = int(_number(path, v)) or None
        elif field == "maxAttempts":
            n = int(_number(path, v, minimum=-1))
            r["limit"] = None if n == -1 else (RetryPolicy().limit if n == 0 else n - 1)
        elif field == "maxRetryDuration":
            r["age_limit"] = seconds(path, v) or None
        elif field == "minBackoff":
            r["min_backoff"] = seconds(path, v)
        elif field == "maxBackoff":
            r["max_backoff"] = seconds(path, v)
        else:
            r["max_doublings"] = int(_number(path, v))
    p = dataclasses.replace(
        p,
        rate=rate,
        bucket_size=bucket if rate is not None else None,
        max_concurrent=conc,
        retry=RetryPolicy(**r),
    )
    return p, any(path.startswith("retryConfig.") for path in paths)


def task_json(
    qname: str, rec: TaskRecord, full: bool, ints: bool, req: dict[str, Any] | None = None
) -> dict[str, Any]:
    """A Task resource from a broker record; its ``httpRequest`` when it is a push task
    (the body only in the FULL view, as Google's). ``req``: the push request the record's
    payload carries, when the caller has it (no need to decode the payload)."""
    tid = rec.id.removeprefix(f"{rec.queue}/")
    created = _rfc3339(rec.enqueued_at)
    out: dict[str, Any] = {
        "name": f"{qname}/tasks/{tid}",
        "scheduleTime": created if rec.eta == rec.enqueued_at else _rfc3339(rec.eta),
        "createTime": created,
        "dispatchCount": rec.attempts,
        "responseCount": max(0, rec.attempts - (rec.state == "leased")),
        "view": (2 if full else 1) if ints else ("FULL" if full else "BASIC"),
    }
    if req is None:
        try:
            env = _env.decode(rec.payload)
        except Exception:  # a payload this version cannot read: shown without its request
            env = None
        if env is not None and env.task == PUSH_TASK and env.args:
            req = env.args[0] if isinstance(env.args[0], dict) else None
    if req is not None:
        method = req.get("method", "POST")
        http: dict[str, Any] = {
            "url": req.get("url", ""),
            "httpMethod": METHODS.index(method) + 1 if ints else method,
            "headers": req.get("headers") or {},
        }
        if full:
            http["body"] = base64.b64encode(req.get("body") or b"").decode()
        out["httpRequest"] = http
        out["dispatchDeadline"] = _duration(float(req.get("deadline") or 600.0))
    if rec.first_attempt_at is not None:
        out["firstAttempt"] = {"dispatchTime": _rfc3339(rec.first_attempt_at)}
    if rec.error:
        out["lastAttempt"] = {"responseStatus": {"code": 2, "message": rec.error}}
    return out


# -- values -----------------------------------------------------------------------------


def view(value: Any) -> bool:
    """Whether a ``responseView`` asks for the FULL view (as a name or an integer)."""
    return value in (2, "2", "FULL")


def page_size(value: str | None) -> int:
    """A ``pageSize`` query value: 0 or absent is the largest page."""
    if not value:
        return _PAGE
    if not value.isdigit() or not 0 <= int(value) <= _PAGE:
        raise ApiError(400, f"pageSize {value!r} must be a whole number from 0 to {_PAGE}")
    return int(value) or _PAGE


def _number(path: str, v: Any, minimum: float = 0) -> float:
    try:
        x = float(v)
    except (TypeError, ValueError):
        raise ApiError(400, f"queue.{path} {v!r} must be a number") from None
    if not minimum <= x < 1e12:
        raise ApiError(400, f"queue.{path} {v!r} must be {minimum:g} or more")
    return x


def seconds(path: str, v: Any) -> float:
    """A protobuf JSON duration ("3.5s") as seconds."""
    if not isinstance(v, str) or not re.fullmatch(r"\d{1,12}(\.\d{1,9})?s", v):
        raise ApiError(400, f'{path} {v!r} must be a duration such as "30s" or "0.5s"')
    return float(v[:-1])


def as_bytes(path: str, v: Any) -> bytes:
    """Protobuf JSON bytes: base64, standard or URL-safe alphabet."""
    if not isinstance(v, str):
        raise ApiError(400, f"{path} must be a base64 string")
    try:
        return base64.b64decode(v.replace("-", "+").replace("_", "/"), validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(400, f"{path} must be base64") from None


def _duration(seconds: float) -> str:
    if float(seconds).is_integer():
        return f"{int(seconds)}s"
    return f"{seconds:.9f}".rstrip("0") + "s"


def timestamp(path: str, v: Any) -> float:
    """An RFC 3339 timestamp as epoch seconds."""
    try:
        text = v.replace("Z", "+00:00")
        head, _, frac = text.partition(".")
        if frac:  # Python reads at most 6 fractional digits
            digits = re.match(r"\d*", frac).group(0)  # type: ignore[union-attr]
            text = f"{head}.{digits[:6]}{frac[len(digits) :]}"
        dt = datetime.fromisoformat(text)
    except (AttributeError, ValueError):
        raise ApiError(400, f"{path} {v!r} must be an RFC 3339 timestamp") from None
    if dt.tzinfo is None:
        raise ApiError(400, f"{path} {v!r} needs a time zone (e.g. a trailing Z)")
    return dt.timestamp()


def _rfc3339(t: float) -> str:
    # isoformat: the same text as strftime("%Y-%m-%dT%H:%M:%S.%fZ") in two thirds the time
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="microseconds")[:-6] + "Z"


def camel(path: str) -> str:
    """A field path in camelCase (an update mask may come in either case)."""
    return ".".join(re.sub(r"_([a-z])", lambda m: m.group(1).upper(), p) for p in path.split("."))


def _snake(name: str) -> str:
    return re.sub(r"([A-Z])", lambda m: "_" + m.group(1).lower(), name)
