"""The write side of the run histograms: which bucket a measured value adds to, and the
``TaskMetrics.extra`` key that bucket is stored under.

Every worker adds each run to these buckets, so this part lives apart from
:mod:`offload.profile`, the reading side, which a worker never needs: the worker process
holds only these few lines. :mod:`offload.profile` describes the buckets and re-exports
these names.
"""

from __future__ import annotations

import math

__all__ = [
    "BUCKETS_PER_DOUBLING",
    "HIGHEST",
    "LOWEST",
    "SCALE",
    "bucket",
    "bucket_bounds",
    "hist_key",
]

BUCKETS_PER_DOUBLING = 4
SCALE = BUCKETS_PER_DOUBLING / math.log(2)  # bucket = floor(log(value) * SCALE)
#: bucket indices are clamped to this range (2**-50 to 2**75: a femtosecond to 32 ZiB), so
#: an absurd value cannot add a key per call
LOWEST, HIGHEST = -200, 300
ZERO = "z"  # the key suffix of the zero bucket


def bucket(value: float) -> int | None:
    """The histogram bucket of ``value``; None for the zero bucket (0, negative or NaN)."""
    if not value > 0.0:
        return None
    if value == math.inf:
        return HIGHEST
    return max(LOWEST, min(HIGHEST, math.floor(math.log(value) * SCALE)))


def bucket_bounds(i: int | None) -> tuple[float, float]:
    """The values bucket ``i`` holds: ``[low, high)``; ``(0, 0)`` for the zero bucket."""
    if i is None:
        return (0.0, 0.0)
    return (2.0 ** (i / BUCKETS_PER_DOUBLING), 2.0 ** ((i + 1) / BUCKETS_PER_DOUBLING))


def hist_key(measure: str, i: int | None) -> str:
    """The ``extra`` key bucket ``i`` of ``measure`` is stored under."""
    return f"h.{measure}.{ZERO if i is None else i}"
