"""Argument checks every broker applies the same way, before any I/O (re-exported by
:mod:`offload.brokers.base`)."""

from __future__ import annotations

import math

from ..errors import ConfigError

__all__ = [
    "MAX_DEAD_LETTERS",
    "MAX_RESULT_TTL",
    "check_dead_letters_limit",
    "check_list_tasks_limit",
    "check_release_delay",
    "check_result",
]

MAX_DEAD_LETTERS = 10_000


def check_release_delay(delay: float) -> float:
    """A ``release`` delay, checked before any I/O the same on every broker: a finite
    number of seconds, 0 or more."""
    if (
        isinstance(delay, bool)
        or not isinstance(delay, (int, float))
        or not math.isfinite(delay)
        or delay < 0
    ):
        raise ConfigError(f"release: delay={delay!r} must be a finite number of seconds, 0 or more")
    return float(delay)


def check_dead_letters_limit(limit: int) -> int:
    """A ``dead_letters`` limit, checked before any I/O the same on every broker: an int
    (not a bool) from 0 to :data:`MAX_DEAD_LETTERS`."""
    if isinstance(limit, bool) or not isinstance(limit, int) or not 0 <= limit <= MAX_DEAD_LETTERS:
        raise ConfigError(
            f"dead_letters: limit={limit!r} must be a whole number from 0 to "
            f"{MAX_DEAD_LETTERS:,} (the most one call returns)"
        )
    return limit


def check_list_tasks_limit(limit: int) -> int:
    """A ``list_tasks`` limit, checked before any I/O the same on every broker: an int (not
    a bool) from 0 to :data:`MAX_DEAD_LETTERS`, the most one page holds."""
    if isinstance(limit, bool) or not isinstance(limit, int) or not 0 <= limit <= MAX_DEAD_LETTERS:
        raise ConfigError(
            f"list_tasks: limit={limit!r} must be a whole number from 0 to "
            f"{MAX_DEAD_LETTERS:,} (the most one page holds)"
        )
    return limit


#: the longest a result is kept (seconds): a day; a result nobody reads within it is gone
MAX_RESULT_TTL = 86_400.0


def check_result(key: str, ttl: float, reply_to: str | None = None) -> float:
    """A result's key, TTL and reply channel, checked before any I/O the same on every
    broker: a key of 1-500 characters, a TTL of more than 0 and at most a day, a reply
    channel of 1-64 letters, digits, '-' or '_'."""
    if not isinstance(key, str) or not 0 < len(key) <= 500:
        raise ConfigError(f"result key {key!r:.80}: must be a string of 1-500 characters")
    if isinstance(ttl, bool) or not isinstance(ttl, (int, float)) or not 0 < ttl <= MAX_RESULT_TTL:
        raise ConfigError(
            f"result ttl={ttl!r}: must be seconds, more than 0 and at most "
            f"{MAX_RESULT_TTL:,.0f} (a day)"
        )
    if reply_to is not None and (
        not isinstance(reply_to, str)
        or not 0 < len(reply_to) <= 64
        or not reply_to.replace("-", "").replace("_", "").isalnum()
        or not reply_to.isascii()
    ):
        raise ConfigError(
            f"reply channel {reply_to!r:.80}: use 1-64 ASCII letters, digits, '-' or '_'"
        )
    return float(ttl)
