"""A queue's retry policy as an operator set it through an API, stored in the broker.

Rate, bucket, concurrency, lease and dedup window are stored by ``declare`` (the last
declaration wins) because the broker enforces them. The retry policy is judged by each
worker, from its own App's declaration; a *retry override* is a policy stored beside the
others by an explicit change (the Cloud Tasks surface's ``retryConfig``), which every
worker serving the queue applies instead of its declaration, until it is changed or
cleared the same way or the queue is dropped. ``declare`` never touches it: a deploy or an
autoscaled worker starting does not undo an operator's change, and during a rolling
deploy old and new workers judge failures alike.

The broker stores the five numbers as a small JSON object (:func:`encode_retry`); it never
reads them. A broker offers overrides by implementing :class:`RetryOverrides`; one that
does not makes the Cloud Tasks surface refuse a ``retryConfig`` (never ignore it).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

from ..core.policy import RetryPolicy
from ..errors import PolicyError

__all__ = ["RetryOverrides", "decode_retry", "encode_retry"]

_FIELDS = ("limit", "age_limit", "min_backoff", "max_backoff", "max_doublings")


@runtime_checkable
class RetryOverrides(Protocol):
    """Retry policies stored per queue by an explicit change, read by workers."""

    async def set_retry_override(self, queue: str, retry: RetryPolicy | None) -> None:
        """Store ``retry`` as ``queue``'s override (None: clear it). Durable when it
        returns; a queue never declared gets no declared policy from it."""

    async def retry_overrides(self, queues: Sequence[str]) -> dict[str, RetryPolicy]:
        """The stored overrides of those of ``queues`` that have one, in one call."""


def encode_retry(retry: RetryPolicy) -> str:
    """The text a broker stores for ``retry``."""
    return json.dumps({f: getattr(retry, f) for f in _FIELDS}, separators=(",", ":"))


def decode_retry(stored: str | bytes | dict[str, Any]) -> RetryPolicy | None:
    """A stored override back as a policy; None for text this version cannot read (a
    damaged or hand-edited value is ignored, never applied half-read)."""
    try:
        raw = json.loads(stored) if isinstance(stored, (str, bytes)) else stored
        return RetryPolicy(**{f: raw[f] for f in _FIELDS})
    except (ValueError, TypeError, KeyError, PolicyError):
        return None
