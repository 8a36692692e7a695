"""Queue policies as frozen values: parsed once, validated with errors that name the field.

The retry math lives here and only here; brokers store the numbers and enforce rate and
concurrency atomically, workers ask :class:`RetryPolicy` what to do after a failure.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

from ..errors import PolicyError

__all__ = ["QueuePolicy", "RetryPolicy", "give_up", "parse_rate"]

# Upper bounds. Each is far beyond any sensible setting, and below what every broker can
# store (PostgreSQL integer columns, timestamps, Lua numbers): a value past one fails at
# declaration, naming the field, instead of in a broker call minutes later.
MAX_COUNT = 1_000_000_000  # max_concurrent, bucket_size, retry.limit, max_doublings
MAX_RATE = 1e9  # tasks per second
MAX_LEASE = 7 * 24 * 3600.0  # App Engine's longest task lease: one week
MAX_SECONDS = 10 * 365 * 24 * 3600.0  # dedup_window, age_limit, backoffs, timeouts

# A worker's tasks in flight when neither -c nor its pool says. Here, not in the autoscaler
# that also reads it, so a worker started with its defaults does not import the autoscaler.
# 64 from bench/sweep_concurrency.py (docs/benchmarks.md, "Choosing the default
# concurrency"): with quick handlers, plain `def` ones ran 10-35% faster at 64 than at 32
# (bigger lane batches), and `async def` ones as fast or faster; 128 was slower for both.
DEFAULT_CONCURRENCY = 64

_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*/\s*([a-z]+)\s*$")
_UNITS = {
    "s": 1.0,
    "sec": 1.0,
    "second": 1.0,
    "m": 60.0,
    "min": 60.0,
    "minute": 60.0,
    "h": 3600.0,
    "hour": 3600.0,
}


def parse_rate(rate: str | float | int | None, *, where: str = "rate") -> float | None:
    """Turn "50/s", "10/m" or "3/h" (or a number of tasks per second) into tasks per second.

    None means unlimited.
    """
    if rate is None:
        return None
    if isinstance(rate, bool):
        raise PolicyError(f"{where} {rate!r}: give a string like '20/s' or a number per second")
    if isinstance(rate, (int, float)):
        value = float(rate)
    elif isinstance(rate, str):
        m = _RATE.match(rate.lower())
        if not m:
            unit = rate.rsplit("/", 1)[-1].strip() if "/" in rate else ""
            if unit and re.match(r"^\d+(\.\d+)?$", rate.split("/")[0].strip()):
                raise PolicyError(f"{where} {rate!r}: unit must be s, m or h (as in '20/s')")
            raise PolicyError(f"{where} {rate!r}: write it as N/s, N/m or N/h (as in '20/s')")
        unit = m.group(2)
        if unit not in _UNITS:
            raise PolicyError(f"{where} {rate!r}: unit must be s, m or h (as in '20/s')")
        value = float(m.group(1)) / _UNITS[unit]
    else:
        raise PolicyError(f"{where} {rate!r}: give a string like '20/s' or a number per second")
    if not math.isfinite(value) or value <= 0:
        raise PolicyError(f"{where} {rate!r}: must be more than zero (or None for unlimited)")
    if value > MAX_RATE:
        raise PolicyError(f"{where} {rate!r}: at most {MAX_RATE:,.0f} per second (or None)")
    return value


def _nonneg(
    name: str,
    value: float | None,
    *,
    allow_none: bool = True,
    integer: bool = False,
    most: float | None = None,
):
    if value is None:
        if allow_none:
            return None
        raise PolicyError(f"{name}: required")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise PolicyError(f"{name} {value!r}: must be a number")
    if integer and not (isinstance(value, int) or (math.isfinite(value) and value.is_integer())):
        raise PolicyError(f"{name} {value!r}: must be a whole number")
    if not math.isfinite(value) or value < 0:
        raise PolicyError(f"{name} {value!r}: must be zero or more")
    if most is None:
        most = MAX_COUNT if integer else MAX_SECONDS
    if value > most:
        shown = f"{int(most):,}" if float(most).is_integer() else f"{most:g}"
        raise PolicyError(f"{name} {value!r}: at most {shown}")
    return int(value) if integer else float(value)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """App Engine's ``retry_parameters``.

    ``limit`` counts retries after the first attempt (None: unlimited); ``age_limit`` is
    seconds since the first attempt (None: unlimited). When both are set, both must be
    exceeded before the task stops retrying. The n-th retry waits
    ``min_backoff * 2**(n-1)`` while n <= max_doublings + 1, then grows linearly by
    ``min_backoff * 2**max_doublings`` per retry, always capped at ``max_backoff``.
    """

    limit: int | None = 3
    age_limit: float | None = None
    min_backoff: float = 0.1
    max_backoff: float = 3600.0
    max_doublings: int = 16

    def __post_init__(self) -> None:
        for name in ("limit", "age_limit", "min_backoff", "max_backoff", "max_doublings"):
            integer = name in ("limit", "max_doublings")
            value = _nonneg(
                f"retry.{name}",
                getattr(self, name),
                allow_none=name in ("limit", "age_limit"),
                integer=integer,
            )
            object.__setattr__(self, name, value)
        if self.max_backoff < self.min_backoff:
            raise PolicyError(
                f"retry.max_backoff {self.max_backoff!r} is below min_backoff "
                f"{self.min_backoff!r}: raise max_backoff or lower min_backoff"
            )

    @classmethod
    def from_retry(cls, retry: object) -> RetryPolicy:
        """Accept a ``Retry(...)`` (the public spelling), a RetryPolicy, or None (defaults)."""
        if retry is None:
            return cls()
        if isinstance(retry, RetryPolicy):
            return retry
        from ..errors import Retry

        if isinstance(retry, Retry):
            base = cls()
            return cls(
                limit=retry.limit if getattr(retry, "_limit_given", False) else base.limit,
                age_limit=retry.age_limit,
                min_backoff=base.min_backoff if retry.min_backoff is None else retry.min_backoff,
                max_backoff=base.max_backoff if retry.max_backoff is None else retry.max_backoff,
                max_doublings=(
                    base.max_doublings if retry.max_doublings is None else retry.max_doublings
                ),
            )
        raise PolicyError(f"retry {retry!r}: pass offload.Retry(limit=..., min_backoff=...)")

    def backoff(self, n: int) -> float:
        """Seconds to wait before the n-th retry (n = 1, 2, ...)."""
        if n < 1:
            raise ValueError("retry number starts at 1")
        doublings = min(n - 1, self.max_doublings)
        if self.min_backoff == 0.0:
            return 0.0
        if doublings > 1100:  # 2**1100 overflows a float; the cap is reached long before
            return self.max_backoff
        delay = self.min_backoff * 2.0**doublings * max(1, n - self.max_doublings)
        return min(delay, self.max_backoff)

    def exhausted(self, retries_done: int, age: float) -> bool:
        """Whether a task that has already been retried ``retries_done`` times, and whose
        first attempt was ``age`` seconds ago, may not be retried again."""
        over_limit = self.limit is not None and retries_done >= self.limit
        over_age = self.age_limit is not None and age >= self.age_limit
        if self.limit is not None and self.age_limit is not None:
            return over_limit and over_age
        return over_limit or over_age


def give_up(policy: RetryPolicy, failed_attempt: int, age: float) -> bool:
    """Whether a task whose attempt number ``failed_attempt`` (1 for the first run) failed
    must be dead-lettered instead of retried; ``age`` is seconds since its first attempt.

    The one give-up rule, used by every path, decided when the failure is known, as App
    Engine does: by the worker when a handler fails, and by the next claimer when a worker
    died mid-run (a claim with ``expired`` set: the failed attempt is the one before it). A
    retry the policy already scheduled is never re-judged when it is claimed: it runs.
    """
    return policy.exhausted(max(0, failed_attempt - 1), age)


def check_timeout(value: float | None, where: str) -> float | None:
    """A handler timeout: seconds, more than zero and at most ten years, or None."""
    t = _nonneg(where, value)
    if t is not None and t <= 0:
        raise PolicyError(f"{where} {value!r}: must be more than zero seconds (or None)")
    return t


@dataclass(frozen=True, slots=True)
class QueuePolicy:
    """Everything a broker must enforce for one queue, globally across workers."""

    name: str
    rate: float | None = None  # tasks per second; None: unlimited
    bucket_size: int | None = None  # token bucket capacity; default: max(1, ceil(rate))
    max_concurrent: int | None = None  # leased at once across all workers; None: unlimited
    lease: float = 60.0  # seconds a claim holds a task before another worker may take it
    dedup_window: float = 3600.0  # seconds a finished named task keeps its name reserved
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    timeout: float | None = None  # seconds a handler may run before TaskTimeout; None: none

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not re.match(r"^[A-Za-z0-9_.:-]{1,100}$", self.name):
            raise PolicyError(
                f"queue name {self.name!r}: use 1-100 letters, digits, '_', '-', '.' or ':'"
            )
        where = f"queue {self.name!r}"
        object.__setattr__(self, "rate", parse_rate(self.rate, where=f"{where}: rate"))
        if self.bucket_size is not None:
            b = _nonneg(f"{where}: bucket_size", self.bucket_size, integer=True)
            if b < 1:
                raise PolicyError(f"{where}: bucket_size {self.bucket_size!r} must be 1 or more")
            object.__setattr__(self, "bucket_size", b)
        mc = _nonneg(f"{where}: max_concurrent", self.max_concurrent, integer=True)
        if mc is not None and mc < 1:
            raise PolicyError(
                f"{where}: max_concurrent {self.max_concurrent!r} must be 1 or more "
                "(pause the queue to stop it)"
            )
        object.__setattr__(self, "max_concurrent", mc)
        lease = _nonneg(f"{where}: lease", self.lease, allow_none=False, most=MAX_LEASE)
        if lease < 0.05:
            raise PolicyError(f"{where}: lease {self.lease!r} must be at least 0.05 seconds")
        object.__setattr__(self, "lease", lease)
        object.__setattr__(
            self,
            "dedup_window",
            _nonneg(f"{where}: dedup_window", self.dedup_window, allow_none=False),
        )
        if not isinstance(self.retry, RetryPolicy):
            object.__setattr__(self, "retry", RetryPolicy.from_retry(self.retry))
        object.__setattr__(self, "timeout", check_timeout(self.timeout, f"{where}: timeout"))

    @property
    def bucket(self) -> float | None:
        """The token bucket's capacity, or None when the queue has no rate limit."""
        if self.rate is None:
            return None
        if self.bucket_size is not None:
            return float(self.bucket_size)
        return float(max(1, math.ceil(self.rate)))
