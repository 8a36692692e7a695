"""Every error offload raises, named by who is at fault.

::

    OffloadError                      root: catch this to catch everything offload raises
    ├── ConfigError                   the caller's configuration or input is wrong (fix the call)
    │   ├── PolicyError               a queue policy value is invalid ("20/x")
    │   ├── UnknownQueue              a queue name the App does not declare
    │   ├── UnknownTask               a task function name the App does not know
    │   ├── BadArguments              arguments a task function's signature rejects
    │   ├── PayloadError              arguments that cannot be encoded as JSON-compatible data
    │   └── BrokerURLError            a broker URL offload cannot parse or has no driver for
    ├── TaskAlreadyExists             a named task exists (or finished within its dedup window)
    ├── BrokerError                   the broker failed
    │   ├── BrokerUnavailable         an outage: the broker is unreachable; nothing happened
    │   │   └── BrokerFull            the broker is out of memory or disk; nothing happened
    │   ├── BrokerRefused             the broker rejected this request; the same request fails again
    │   └── Unsupported               the broker declares it lacks this feature
    ├── TaskControl                   raised by a handler to steer its own task
    │   ├── Retry                     run again after ``after`` seconds (or per policy)
    │   └── Fail                      stop now and dead-letter the task
    ├── TaskError                     the task's own code failed
    │   ├── TaskTimeout               the task ran longer than its queue's or its own timeout
    │   ├── MemoryLimitExceeded       the task went over its memory limit
    │   ├── ProcessDied               its child process died before reporting back
    │   └── RemoteError               a called task failed for good: its type, message, traceback
    └── chan errors (offload.chan)    Closed, ChanPanic, Canceled, DeadlineExceeded (also
                                      what a call raises past its deadline: one class, so one
                                      ``except`` catches a Context's and a call's alike)

Messages say what was wrong, where, and what to do about it.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = [
    "BadArguments",
    "BrokerError",
    "BrokerFull",
    "BrokerRefused",
    "BrokerURLError",
    "BrokerUnavailable",
    "ConfigError",
    "Fail",
    "MemoryLimitExceeded",
    "OffloadError",
    "PayloadError",
    "PolicyError",
    "ProcessDied",
    "RemoteError",
    "Retry",
    "TaskAlreadyExists",
    "TaskControl",
    "TaskError",
    "TaskTimeout",
    "UnknownQueue",
    "UnknownTask",
    "Unsupported",
]


_UNSET: object = object()


class OffloadError(Exception):
    """Root of every error offload raises."""


class ConfigError(OffloadError, ValueError):
    """The caller's configuration or input is wrong; retrying will not help."""


class PolicyError(ConfigError):
    """A queue policy value is invalid."""


class UnknownQueue(ConfigError, LookupError):
    """A queue name that the App does not declare."""


class UnknownTask(ConfigError, LookupError):
    """A task function name that the App does not know."""


class BadArguments(ConfigError, TypeError):
    """Arguments that the task function's signature rejects."""


class PayloadError(ConfigError, TypeError):
    """Arguments that cannot be encoded into a task payload."""


class BrokerURLError(ConfigError):
    """A broker URL that cannot be parsed, or whose driver is not installed."""


class TaskAlreadyExists(OffloadError):
    """A task with this name exists in the queue, or finished within its dedup window.

    ``names`` lists every duplicate name when a batch was sent; the other tasks of the
    batch were enqueued.
    """

    def __init__(self, message: str, names: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.names: list[str] = list(names)


class BrokerError(OffloadError):
    """The broker failed or could not be reached; the operation may be retried."""


class BrokerUnavailable(BrokerError, ConnectionError):
    """The broker could not be reached; the operation did not happen."""


class BrokerFull(BrokerUnavailable):
    """The broker is out of memory or disk (Redis ``maxmemory`` with ``noeviction``, a full
    disk): nothing happened. A worker treats it as an outage and waits; a sender gets this
    error and decides (free space on the broker, or try again later)."""


class BrokerRefused(BrokerError):
    """The broker rejected the request itself (a value it cannot store, a constraint):
    nothing happened, and sending the same request again fails the same way. A worker
    reports it once and goes on with its other work."""


class Unsupported(BrokerError, NotImplementedError):
    """The broker declares, in its capabilities, that it lacks this feature."""


class TaskControl(OffloadError):
    """Raised by a handler to choose what happens to its own task."""


class Retry(TaskControl):
    """Retry this task.

    Raised from a handler, ``Retry(after=5)`` runs the task again in five seconds (the
    retry still counts against the queue's ``limit`` and ``age_limit``); ``Retry()`` uses the
    queue's backoff. Passed to ``App.queue(retry=...)`` it is the queue's retry policy, with
    App Engine's ``retry_parameters`` meaning (see :class:`offload.core.policy.RetryPolicy`).
    """

    def __init__(
        self,
        after: float | None = None,
        *,
        limit: int | object | None = _UNSET,
        age_limit: float | None = None,
        min_backoff: float | None = None,
        max_backoff: float | None = None,
        max_doublings: int | None = None,
        reason: str = "",
    ) -> None:
        after = _seconds_after(after)
        super().__init__(reason or (f"retry in {after:g}s" if after is not None else "retry"))
        self.after: float | None = after
        # limit=None means "unlimited"; leaving it out means "the default limit".
        self._limit_given = limit is not _UNSET
        self.limit = None if limit is _UNSET else limit
        self.age_limit = age_limit
        self.min_backoff = min_backoff
        self.max_backoff = max_backoff
        self.max_doublings = max_doublings
        self.reason = reason


def _seconds_after(after: object) -> float | None:
    """``Retry(after=)`` as seconds: a number or a ``timedelta``, finite and >= 0. Anything
    else raises here, at the raise site, so the handler's task fails with a clear reason
    instead of the worker failing to compute its verdict."""
    if after is None:
        return None
    seconds = getattr(after, "total_seconds", None)
    if callable(seconds) and not isinstance(after, (int, float)):
        after = seconds()
    if isinstance(after, bool) or not isinstance(after, (int, float)):
        raise ConfigError(
            f"Retry(after={after!r}): give seconds as a number or a datetime.timedelta"
        )
    value = float(after)
    if not value >= 0 or value == float("inf"):
        raise ConfigError(f"Retry(after={after!r}): must be a finite number of seconds >= 0")
    return value


class Fail(TaskControl):
    """Stop retrying: the task is dead-lettered at once with this message."""


class TaskError(OffloadError):
    """The task's own code failed."""


class TaskTimeout(TaskError, TimeoutError):
    """The handler ran past its ``timeout`` (the task's, else its queue's). The task fails
    under its retry policy and its slot is freed: an async handler is cancelled; a thread
    handler gets this exception raised inside its thread; either, if it does not stop, is
    abandoned (counted and logged)."""


class MemoryLimitExceeded(TaskError, MemoryError):
    """The task's process went over its memory limit and was killed."""


class ProcessDied(TaskError):
    """The child process running a task (process executor) died before it reported back:
    a crash in C code, ``os._exit``, a kill from outside. The worker replaces the child;
    the task fails under its retry policy."""


class RemoteError(TaskError):
    """A task called with ``call``/``result`` failed for good (its handler raised and will
    not be retried: ``Fail``, an exhausted retry policy, or a result that could not travel).

    ``type`` is the remote exception's qualified name, ``message`` its text and
    ``traceback`` the remote traceback, as the worker recorded them."""

    def __init__(self, text: str, *, type: str = "", message: str = "", traceback: str = ""):
        super().__init__(text)
        self.type = type
        self.message = message
        self.traceback = traceback
