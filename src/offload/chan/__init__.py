"""Go's channels, select, Context, WaitGroup and ErrGroup, for threads and asyncio at once.

One :class:`Chan` works from any thread and any event loop simultaneously: threads call
``send``/``recv`` (blocking), coroutines ``await async_send``/``async_recv``. See
``docs/chan.md`` for the semantics. Standalone: imports nothing of offload but its errors.

Note: the functions ``select`` and ``go`` shadow the submodules of the same names as
attributes of this package; import submodule internals with ``from offload.chan.select
import ...`` (which still works).
"""

from offload.chan.chan import Chan, nil
from offload.chan.context import (
    CancelFunc,
    Context,
    background,
    with_cancel,
    with_deadline,
    with_timeout,
    with_value,
)
from offload.chan.errors import (
    BadTimeout,
    BlockingCallInLoop,
    Canceled,
    ChanPanic,
    Closed,
    DeadlineExceeded,
    WouldBlock,
)
from offload.chan.go import Handle, go
from offload.chan.select import DEFAULT, Case, async_select, recv, select, send
from offload.chan.sync import ErrGroup, WaitGroup

__all__ = [
    "DEFAULT",
    "BadTimeout",
    "BlockingCallInLoop",
    "CancelFunc",
    "Canceled",
    "Case",
    "Chan",
    "ChanPanic",
    "Closed",
    "Context",
    "DeadlineExceeded",
    "ErrGroup",
    "Handle",
    "WaitGroup",
    "WouldBlock",
    "async_select",
    "background",
    "go",
    "nil",
    "recv",
    "select",
    "send",
    "with_cancel",
    "with_deadline",
    "with_timeout",
    "with_value",
]
