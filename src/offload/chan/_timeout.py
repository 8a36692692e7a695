"""The one rule for every timeout and deadline :mod:`offload.chan` accepts.

Each call that takes seconds (``send``/``recv``/``recv_ok``/``select``/``async_select``,
``Handle.join``, ``WaitGroup.wait``, ``ErrGroup.wait``, ``with_timeout``, ``with_deadline``)
checks its value here, before it queues a waiter or a timer, so a bad value fails in the
caller's own frame and never inside the shared timer thread or a channel's queues:

- ``None`` or ``math.inf``: no timeout (wait forever). For ``with_timeout`` and
  ``with_deadline`` only ``math.inf``: a context with no deadline of its own (the
  parent's, if any, still applies).
- any other real number of seconds (``int``, ``float``, ``fractions.Fraction``...), however
  large: waits are made in slices of at most :data:`MAX_WAIT`, so no value ever reaches an
  operating-system limit (``threading.TIMEOUT_MAX``, ``time_t``).
- zero, a negative number or ``-math.inf``: already expired, as in Go: one attempt that
  does not block, and a context born with :class:`DeadlineExceeded`.
- NaN, ``bool``, ``str`` or anything else that is not a real number: :class:`BadTimeout`.
"""

from __future__ import annotations

import math
import time
from typing import Any

from offload.chan.errors import BadTimeout

__all__ = ["MAX_WAIT", "acquire", "seconds", "timeout"]

MAX_WAIT = 86400.0
"""The longest single sleep (one day): a longer wait is a loop of such sleeps."""

_INF = math.inf
_monotonic = time.monotonic


def seconds(value: Any, what: str, forever: str = "None (or math.inf)") -> float:
    """``value`` as a float (``±inf`` allowed), or :class:`BadTimeout` naming ``what``.

    ``forever`` is what the message tells the caller to pass for "no timeout".
    """
    t = type(value)
    if t is float:
        if value != value:
            raise _nan(what, forever)
        return value  # type: ignore[no-any-return]
    if t is int:
        return _to_float(value)
    return _slow(value, what, forever)


def timeout(value: Any, what: str) -> float | None:
    """A validated wait: ``None`` for "forever", else seconds ``>= 0`` (negative is 0)."""
    if value is None:
        return None
    s = seconds(value, what)
    if s > 0.0:
        return None if s == _INF else s
    return 0.0


def acquire(lock: Any, timeout: float | None) -> bool:
    """``lock.acquire`` for a :func:`timeout`-checked value of any size; False on timeout."""
    if timeout is None:
        return lock.acquire()  # type: ignore[no-any-return]
    if timeout <= MAX_WAIT:
        return lock.acquire(True, timeout)  # type: ignore[no-any-return]
    deadline = _monotonic() + timeout
    while True:
        left = deadline - _monotonic()
        if left <= 0.0:
            return lock.acquire(False)  # type: ignore[no-any-return]
        if lock.acquire(True, min(left, MAX_WAIT)):
            return True


def _to_float(value: Any) -> float:
    try:
        return float(value)
    except OverflowError:  # an int too large for a float: as far away as it gets
        return _INF if value > 0 else -_INF


def _slow(value: Any, what: str, forever: str) -> float:
    import numbers  # only for unusual types (Fraction, numpy scalars): not at import

    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise BadTimeout(
            f"{what}: expected a number of seconds (int or float), got "
            f"{type(value).__name__} {value!r}; pass {forever} for no timeout"
        )
    f = _to_float(value)
    if f != f:
        raise _nan(what, forever)
    return f


def _nan(what: str, forever: str) -> BadTimeout:
    return BadTimeout(
        f"{what}: got NaN, which is neither a wait nor a deadline; pass a number of "
        f"seconds, or {forever} for no timeout"
    )
