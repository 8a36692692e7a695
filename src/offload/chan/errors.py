"""Errors of :mod:`offload.chan`, named by who is at fault.

::

    OffloadError
    ├── Closed                  receive from a closed, drained channel (the sender is done)
    ├── ChanPanic               a programming error Go would panic on: send on a closed
    │                           channel, close of a closed or nil channel, negative WaitGroup
    ├── WouldBlock              a *_nowait call found nothing ready (try again later)
    ├── BlockingCallInLoop      a blocking call made from a thread running an event loop
    │                           (also RuntimeError; use the ``async_*`` form instead)
    ├── Canceled                the Context was canceled ("context canceled")
    ├── DeadlineExceeded        the Context's deadline passed (also TimeoutError)
    └── ConfigError             (offload.errors) the caller's input is wrong
        └── BadTimeout          a timeout or deadline that is not a number of seconds:
                                NaN, a bool, a string (also TypeError and ValueError)
"""

from __future__ import annotations

from offload.errors import ConfigError, OffloadError

__all__ = [
    "BadTimeout",
    "BlockingCallInLoop",
    "Canceled",
    "ChanPanic",
    "Closed",
    "DeadlineExceeded",
    "WouldBlock",
]


class Closed(OffloadError):
    """Receive from a channel that is closed and drained: no value will ever come."""


class ChanPanic(OffloadError):
    """A misuse Go would panic on; the message names it ("send on closed channel")."""


class WouldBlock(OffloadError):
    """A ``*_nowait`` operation could not complete at once; nothing happened."""


class BlockingCallInLoop(OffloadError, RuntimeError):
    """A blocking channel call from a thread that runs an event loop would freeze the loop."""


class Canceled(OffloadError):
    """The Context was canceled by its owner or an ancestor."""

    def __init__(self, message: str = "context canceled") -> None:
        super().__init__(message)


class DeadlineExceeded(OffloadError, TimeoutError):
    """The Context's deadline passed before the work finished."""

    def __init__(self, message: str = "context deadline exceeded") -> None:
        super().__init__(message)


class BadTimeout(ConfigError, TypeError):
    """A timeout or deadline that is not a number of seconds (NaN, a bool, a string...).

    Raised by the call that was given it, before anything was queued or scheduled. It is
    both a ``ValueError`` (via :class:`~offload.errors.ConfigError`) and a ``TypeError``, so
    code that caught what Python raised for these values before keeps working.
    """
