"""What becomes of a task once its handler returned or raised: ack, retry after a delay, or
dead-letter, with an error text every broker can store. Pure: the worker feeds it facts and
sends what it says; nothing a handler raises may make it fail.

Error texts are made safe here, once, for every broker: an exception whose ``__str__``
raises falls back to its ``repr`` (and to its type name); lone surrogates (a filename
decoded with ``surrogateescape``) and NUL characters are escaped as ``\\udcxx`` and
``\\x00``; sizes are bounded, keeping the head and the tail of a long traceback.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ..errors import BadArguments, Fail, Retry, TaskTimeout
from .policy import MAX_SECONDS, RetryPolicy, give_up

__all__ = ["ERROR_LIMIT", "TRACEBACK_LIMIT", "Verdict", "describe", "judge", "safe_text"]

ERROR_LIMIT = 2_000  # characters kept of an error message
TRACEBACK_LIMIT = 32_000  # characters kept of a traceback (head and tail)


@dataclass(frozen=True, slots=True)
class Verdict:
    """``ack``: remove the task; ``retry``: run it again after ``delay`` seconds;
    ``dead``: move it to the dead letters. ``error`` and ``traceback`` are safe to store."""

    kind: Literal["ack", "retry", "dead"]
    delay: float = 0.0
    error: str = ""
    traceback: str = ""


ACK = Verdict("ack")


def safe_text(text: object, limit: int = ERROR_LIMIT) -> str:
    """``text`` as a string any broker stores unchanged: valid UTF-8 (lone surrogates
    escaped), no NUL, at most ``limit`` characters (long ones keep their head and tail)."""
    if not isinstance(text, str):
        text = _str_of(text)
    if not text.isascii():
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    if "\x00" in text:
        text = text.replace("\x00", "\\x00")
    if len(text) > limit:
        keep = max(0, limit - 40)
        head, tail = keep * 2 // 3, keep - keep * 2 // 3
        cut = len(text) - head - tail
        text = f"{text[:head]}\n... [{cut:,} characters cut] ...\n{text[len(text) - tail :]}"
    return text


def _str_of(obj: object) -> str:
    for render in (str, repr):
        try:
            out = render(obj)
        except Exception:
            continue
        if isinstance(out, str):
            return out
    return f"<unprintable {type(obj).__qualname__}>"


def describe(exc: BaseException) -> str:
    """``Type: message`` for an exception, whatever its ``__str__`` does."""
    message = _str_of(exc)
    name = type(exc).__qualname__
    return f"{name}: {message}" if message else name


def judge(
    exc: BaseException | None,
    tb: str,
    policy: RetryPolicy,
    attempt: int,
    age: float,
) -> Verdict:
    """The verdict for attempt number ``attempt`` of a task that ended with ``exc`` (None:
    it returned), ``age`` seconds after its first attempt.

    ``Fail`` and arguments the function rejects go to the dead letters at once; ``Retry``
    retries after its own delay, any other exception after the policy's backoff, until
    :func:`~offload.core.policy.give_up` says the policy is exhausted.
    """
    if exc is None:
        return ACK
    tb = safe_text(tb, TRACEBACK_LIMIT)
    if isinstance(exc, BadArguments):
        return Verdict("dead", error=safe_text(f"BadArguments: {_str_of(exc)}"))
    if isinstance(exc, Fail):
        return Verdict("dead", error=safe_text(f"Fail: {_str_of(exc)}"), traceback=tb)
    error = describe(exc)
    if isinstance(exc, TaskTimeout):
        error = f"TaskTimeout: {_str_of(exc)}"
    if give_up(policy, attempt, age):
        return Verdict(
            "dead",
            error=safe_text(f"{error} (retry policy exhausted after {attempt} attempts)"),
            traceback=tb,
        )
    delay = None
    if isinstance(exc, Retry):
        delay = getattr(exc, "after", None)
        if not isinstance(delay, (int, float)) or isinstance(delay, bool) or not delay >= 0:
            delay = None  # a Retry whose ``after`` was changed after it was made
    if delay is None:
        delay = policy.backoff(max(1, attempt))
    return Verdict("retry", min(float(delay), MAX_SECONDS), safe_text(error), tb)


def judge_expired_claim(policy: RetryPolicy, attempt: int, age: float) -> Verdict | None:
    """A claim that took over an expired lease: its previous attempt (``attempt - 1``)
    ended without a verdict because its worker died, hung or lost the lease. Dead-letter
    it now if that attempt was the last the policy allows; else None (run it)."""
    failed = attempt - 1
    if failed < 1 or not give_up(policy, failed, age):
        return None
    return Verdict(
        "dead",
        error=(
            f"retry policy exhausted after {failed} attempts; the last one never reported "
            "back: its worker died or lost the task's lease before finishing (crash, "
            "kill -9, out of memory, or a handler that blocked the worker's event loop?)"
        ),
    )
