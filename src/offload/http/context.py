"""What every part of the HTTP face shares: the App it serves and the tokens it accepts.

Each part (``api``, ``cloudtasks``, ``dashboard``, ``metrics``) is a module with a
``routes(ctx) -> list[BaseRoute]`` function; :func:`offload.http.create_app` mounts them all
behind one authentication layer, so no part can forget it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from starlette.concurrency import run_in_threadpool

from .limits import FailureLimiter

if TYPE_CHECKING:
    from ..app import App

__all__ = ["HttpContext"]

T = TypeVar("T")


@dataclass(frozen=True)
class HttpContext:
    """The served App, the accepted bearer tokens (empty with ``no_auth``), how wrong
    tokens are slowed down (``limiter``, per client address), and where per-server state
    lives (``extras``: a part keeps its own objects under its name)."""

    app: App
    tokens: frozenset[str]
    no_auth: bool = False
    extras: dict[str, Any] = field(default_factory=dict)
    limiter: FailureLimiter = field(default_factory=FailureLimiter)

    async def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run one of the App's synchronous methods without blocking the event loop."""
        return await run_in_threadpool(functools.partial(fn, *args, **kwargs))
