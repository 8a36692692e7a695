"""Brokers, chosen by URL, their drivers imported only when used.

``sqlite:///path.db`` (the default; nothing to install), ``redis://host:port/db`` (also
``rediss://`` and ``redis+cluster://``; ``pip install 'offload[redis]'``) and
``postgresql://user@host/db`` (``pip install 'offload[postgres]'``). Every broker takes a
namespace in its URL so several apps (or tests) can share a server: ``?prefix=`` on Redis,
``?schema=`` on PostgreSQL.
"""

from __future__ import annotations

import importlib
from urllib.parse import urlsplit

from ..errors import BrokerURLError
from .base import (
    Broker,
    Capabilities,
    Claimed,
    DeadLetter,
    Lease,
    NewTask,
    QueueStats,
    TaskMetrics,
)

__all__ = [
    "Broker",
    "Capabilities",
    "Claimed",
    "DeadLetter",
    "Lease",
    "NewTask",
    "QueueStats",
    "TaskMetrics",
    "broker_from_url",
]

# scheme -> (module, class, the extra that installs its driver)
_SCHEMES: dict[str, tuple[str, str, str | None]] = {
    "sqlite": ("offload.brokers.sqlite", "SQLiteBroker", None),
    "redis": ("offload.brokers.redis", "RedisBroker", "redis"),
    "rediss": ("offload.brokers.redis", "RedisBroker", "redis"),
    "redis+cluster": ("offload.brokers.redis", "RedisBroker", "redis"),
    "rediss+cluster": ("offload.brokers.redis", "RedisBroker", "redis"),
    "postgresql": ("offload.brokers.postgres", "PostgresBroker", "postgres"),
    "postgres": ("offload.brokers.postgres", "PostgresBroker", "postgres"),
}


def broker_from_url(url: str) -> Broker:
    """Build an unopened broker for ``url``; raises :class:`BrokerURLError` with a fix."""
    if not isinstance(url, str) or "://" not in url:
        raise BrokerURLError(
            f"broker URL {url!r}: expected scheme://..., e.g. sqlite:///offload.db, "
            "redis://127.0.0.1:6379/0 or postgresql://127.0.0.1/mydb"
        )
    scheme = urlsplit(url).scheme.lower()
    if scheme not in _SCHEMES:
        known = ", ".join(sorted(_SCHEMES))
        raise BrokerURLError(f"broker URL {url!r}: unknown scheme {scheme!r}; use one of {known}")
    module, cls, extra = _SCHEMES[scheme]
    try:
        mod = importlib.import_module(module)
    except ImportError as exc:
        if (exc.name or "").startswith("offload"):
            raise  # a bug of ours, not a missing driver: show it as it is
        hint = f"pip install 'offload[{extra}]'" if extra else "reinstall offload"
        raise BrokerURLError(
            f"broker URL {url!r} needs a driver that is not installed ({exc.name}): {hint}"
        ) from None
    return getattr(mod, cls)(url)
