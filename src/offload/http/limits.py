"""Slowing down a client that guesses API tokens: a token bucket of failures per client
address.

Every client address starts with ``burst`` failed attempts in hand and earns one more every
``refill_seconds``. A wrong bearer token or a wrong token on the login form spends one;
with none left, the address is refused (JSON 429 with ``Retry-After`` on the API, a message
on the login form) *without the token being looked at*, so a guesser learns nothing while it
waits, whether its guess was right or not. The default, 10 at once then one every 6 s,
never bothers a person who mistypes a token, and holds a guesser to 10 tries a minute, which
against a token of even 64 random bits is no chance at all.

What a client is: the address the ASGI server gives (``scope["client"]``), an IPv6 address
by its /64 (one host usually owns the whole /64, so counting its addresses apart would
hand it billions of buckets). Behind a reverse proxy every client is the proxy unless the
server is told to trust its ``X-Forwarded-For`` (uvicorn: ``--proxy-headers
--forwarded-allow-ips``). The buckets live in the serving process: several server processes
each count on their own. At most ``max_clients`` addresses are remembered (the least
recently failing ones are forgotten first), so a flood of addresses cannot exhaust memory.
"""

from __future__ import annotations

import ipaddress
import math
import time
from collections import OrderedDict
from collections.abc import Callable

__all__ = ["FailureLimiter", "client_key"]


def client_key(host: str | None) -> str:
    """The bucket a client address counts in: an IPv4 address itself, an IPv6 address its
    /64 network (an IPv4-mapped one as its IPv4 address), anything else (a Unix socket, a
    test client's name) as given."""
    if not host:
        return "unknown"
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return host
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


class FailureLimiter:
    """Per client address, how many more wrong tokens it may send now (see the module
    docstring). ``clock`` is injectable for tests (default: :func:`time.monotonic`)."""

    def __init__(
        self,
        burst: int = 10,
        refill_seconds: float = 6.0,
        *,
        max_clients: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if burst < 1 or refill_seconds <= 0 or max_clients < 1:
            raise ValueError(
                f"FailureLimiter(burst={burst!r}, refill_seconds={refill_seconds!r}, "
                f"max_clients={max_clients!r}): burst and max_clients must be 1 or more, "
                "refill_seconds more than 0"
            )
        self.burst = burst
        self.refill_seconds = refill_seconds
        self.max_clients = max_clients
        self._clock = clock
        #: client key -> (failures still allowed, when that was computed)
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def _level(self, key: str, now: float) -> float:
        held = self._buckets.get(key)
        if held is None:
            return float(self.burst)
        left, at = held
        return min(float(self.burst), left + (now - at) / self.refill_seconds)

    def wait(self, host: str | None) -> float:
        """Seconds before ``host`` may try a token again; 0 when it may now."""
        if not self._buckets:  # nobody sent a wrong token: no address to parse per request
            return 0.0
        key = client_key(host)
        left = self._level(key, self._clock())
        return 0.0 if left >= 1.0 else (1.0 - left) * self.refill_seconds

    def retry_after(self, host: str | None) -> int:
        """:meth:`wait` in whole seconds, rounded up, as a ``Retry-After`` header says it."""
        return math.ceil(self.wait(host))

    def failed(self, host: str | None) -> None:
        """Count one wrong token from ``host``."""
        key = client_key(host)
        now = self._clock()
        left = max(0.0, self._level(key, now) - 1.0)
        self._buckets[key] = (left, now)
        self._buckets.move_to_end(key)
        while len(self._buckets) > self.max_clients:
            self._buckets.popitem(last=False)
