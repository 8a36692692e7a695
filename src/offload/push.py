"""Push delivery: the built-in task function ``offload.push`` sends an HTTP-target task's
request to its URL, from the workers that serve the task's queue, under that queue's rate,
concurrency and retry policy (``App.push`` and Cloud Tasks ``tasks.create`` make them).

What a receiver gets: the task's method, body and headers, plus ``X-CloudTasks-QueueName``,
``X-CloudTasks-TaskName``, ``X-CloudTasks-TaskRetryCount``, ``X-CloudTasks-TaskExecutionCount``,
``X-CloudTasks-TaskETA`` and the Standard Webhooks headers ``webhook-id`` (the task id:
the same on every retry), ``webhook-timestamp`` and ``webhook-signature`` (``v1``, HMAC-SHA256
with the queue's secret: ``$OFFLOAD_PUSH_SECRETS`` ``queue=whsec_...,...``, else
``$OFFLOAD_PUSH_SECRET``), so any language's Standard Webhooks library verifies it.

How a delivery ends, decided here and nowhere else:

* a 2xx response acks the task;
* a 429 or 503 with ``Retry-After`` retries after that delay (``offload.Retry(after=...)``,
  still counted against the queue's retry limit);
* any other status (3xx included: redirects are never followed), a connection error or the
  dispatch deadline raise :class:`PushFailed`, which the queue's retry policy retries;
* a target the SSRF guard refuses, or a queue without a secret, is dead-lettered at once
  (``offload.Fail``) with the reason.

The SSRF guard resolves the target's host (an answer is reused for ``RESOLVE_TTL`` seconds,
and judged again at every delivery), refuses it when any address it resolves to is
loopback, private, link-local, multicast, reserved, unspecified, not globally routable or
a cloud metadata address (unless ``$OFFLOAD_PUSH_ALLOW`` lists a network, as CIDRs, that
holds it), and then connects to that checked address itself (the URL's host travels in the
``Host`` header and as the TLS server name), so a DNS answer that changes between the check
and the connection cannot redirect the request. Decimal, octal, short and IPv4-mapped IPv6
forms of an address are caught because the check is on the resolved address, not the text.
Connections are kept alive and reused per checked address (:mod:`offload.push_pool`).

An ``https://`` target's certificate is verified against the URL's host name (sent as the
TLS server name) with the default roots (certifi's), plus the PEM file
``$OFFLOAD_PUSH_CA_BUNDLE`` names, for receivers whose certificates a private CA signed.
A certificate that does not verify fails the attempt (retried by the policy, then
dead-lettered) with a reason that says so; a bundle that cannot be read dead-letters at
once. ``SSL_CERT_FILE`` and proxy variables are ignored: the client reads no environment.
"""

from __future__ import annotations

import asyncio
import email.utils
import functools
import ipaddress
import os
import re
import socket
import ssl
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, urlsplit

from . import push_pool
from .app import PUSH_TASK
from .errors import BadArguments, Fail, Retry, TaskError

__all__ = [
    "PUSH_TASK",
    "PushConfig",
    "PushFailed",
    "deliver",
    "make_request",
    "refusal",
]

#: addresses of cloud metadata services, refused even when their network is allowed
_METADATA = frozenset(
    ipaddress.ip_address(a) for a in ("169.254.169.254", "fd00:ec2::254", "100.100.100.200")
)
#: headers offload sets itself; a task's own value for one of these is dropped
_RESERVED = frozenset(
    {
        "host",
        "content-length",
        "connection",
        "transfer-encoding",
        "webhook-id",
        "webhook-timestamp",
        "webhook-signature",
        "x-cloudtasks-queuename",
        "x-cloudtasks-taskname",
        "x-cloudtasks-taskretrycount",
        "x-cloudtasks-taskexecutioncount",
        "x-cloudtasks-tasketa",
    }
)
_RESPONSE_READ_LIMIT = 64 * 1024  # bytes of a response read (to keep the connection)
_MAX_RETRY_AFTER = 86_400.0
_ALLOW_HINT = " (allow its network in OFFLOAD_PUSH_ALLOW if this is intended)"
METHODS = ("POST", "GET", "HEAD", "PUT", "DELETE", "PATCH", "OPTIONS")
MAX_BODY = 1 << 20  # bytes: what one Cloud Tasks task may carry
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,256}")


def make_request(
    url: str,
    body: bytes | str = b"",
    headers: Mapping[str, str] | None = None,
    method: str = "POST",
    deadline: float = 600.0,
    delay: float | None = None,
) -> dict[str, Any]:
    """A push request as its task carries it (the built-in task function's argument),
    checked at send: an http(s) URL with a host and no credentials, spaces or line breaks
    (at most 2083 characters), a known method, header names that are HTTP tokens and
    values without line breaks, a body of at most 1 MiB, a dispatch ``deadline`` from 0.1 to
    1800 seconds. Raises :class:`~offload.errors.BadArguments` naming what is wrong."""
    parts = urlsplit(url) if isinstance(url, str) else None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        raise BadArguments(f"push: url {url!r:.200} must be an http:// or https:// URL with a host")
    if "@" in parts.netloc or len(url) > 2083 or any(c in url for c in "\r\n\t "):
        raise BadArguments(
            f"push: url {url!r:.200} must be at most 2083 characters, without credentials, "
            "spaces or line breaks"
        )
    try:
        parts.port  # noqa: B018 (raises on a port out of range)
    except ValueError as exc:
        raise BadArguments(f"push: url {url!r:.200}: {exc}") from None
    if method not in METHODS:
        raise BadArguments(f"push: method {method!r} must be one of {', '.join(METHODS)}")
    if isinstance(body, str):
        body = body.encode()
    if not isinstance(body, bytes) or len(body) > MAX_BODY:
        raise BadArguments("push: body must be bytes or str of at most 1 MiB")
    hdrs = dict(headers or {})
    for k, v in hdrs.items():
        if (
            not isinstance(k, str)
            or not isinstance(v, str)
            or not _HEADER_NAME.fullmatch(k)
            or any(c in v for c in "\r\n\x00")
        ):
            raise BadArguments(f"push: header {k!r:.100}: {v!r:.100} is not a valid header")
    if (
        isinstance(deadline, bool)
        or not isinstance(deadline, (int, float))
        or not 0.1 <= deadline <= 1800
    ):
        raise BadArguments(f"push: deadline {deadline!r} must be seconds from 0.1 to 1800")
    return {
        "url": url,
        "method": method,
        "headers": hdrs,
        "body": body,
        "deadline": float(deadline),
        "eta": time.time() + float(delay or 0.0),
    }


class PushFailed(TaskError):
    """A delivery did not get a 2xx response (a status, a connection error, the dispatch
    deadline); the queue's retry policy decides what happens next."""


@dataclass(frozen=True, slots=True)
class PushConfig:
    """What the workers need to deliver: signing secrets, the networks the SSRF guard
    lets through, and extra CA certificates to trust. Read from the environment
    (``from_env``) at each delivery, so a worker picks up a rotated secret without a
    restart."""

    secret: str | None = None
    queue_secrets: Mapping[str, str] | None = None
    allow: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    ca_bundle: str | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> PushConfig:
        """``OFFLOAD_PUSH_SECRET``, ``OFFLOAD_PUSH_SECRETS`` (``queue=whsec_...`` pairs,
        comma-separated), ``OFFLOAD_PUSH_ALLOW`` (CIDRs, comma-separated) and
        ``OFFLOAD_PUSH_CA_BUNDLE`` (a PEM file of CA certificates trusted besides the
        default roots); a malformed entry raises :class:`offload.errors.Fail` naming it
        (the task is dead-lettered with that reason rather than sent unsigned or
        unguarded)."""
        key = (
            env.get("OFFLOAD_PUSH_SECRET", ""),
            env.get("OFFLOAD_PUSH_SECRETS", ""),
            env.get("OFFLOAD_PUSH_ALLOW", ""),
            env.get("OFFLOAD_PUSH_CA_BUNDLE", ""),
        )
        return _config(*key)

    def secret_for(self, queue: str) -> str | None:
        return (self.queue_secrets or {}).get(queue) or self.secret


_CONFIGS: dict[tuple[str, str, str, str], PushConfig] = {}


def _config(secret: str, secrets: str, allow: str, ca_bundle: str = "") -> PushConfig:
    key = (secret, secrets, allow, ca_bundle)
    got = _CONFIGS.get(key)
    if got is not None:
        return got
    per_queue = {}
    for item in filter(None, (s.strip() for s in secrets.split(","))):
        queue, sep, value = item.partition("=")
        if not sep or not queue.strip() or not value.strip():
            raise Fail(f"OFFLOAD_PUSH_SECRETS entry {item.split('=')[0]!r}...: use queue=whsec_...")
        per_queue[queue.strip()] = _check_secret(value.strip(), f"queue {queue.strip()!r}")
    nets = []
    for cidr in filter(None, (s.strip() for s in allow.split(","))):
        try:
            nets.append(ipaddress.ip_network(cidr, strict=False))
        except ValueError:
            raise Fail(f"OFFLOAD_PUSH_ALLOW entry {cidr!r} is not a CIDR (e.g. 10.0.0.0/8)")
    got = PushConfig(
        _check_secret(secret.strip(), "OFFLOAD_PUSH_SECRET") if secret.strip() else None,
        per_queue,
        tuple(nets),
        ca_bundle.strip() or None,
    )
    if len(_CONFIGS) > 16:
        _CONFIGS.clear()
    _CONFIGS[key] = got
    return got


def _check_secret(value: str, where: str) -> str:
    from standardwebhooks.webhooks import Webhook

    try:
        Webhook(value)
    except Exception:
        raise Fail(f"push secret of {where}: not a whsec_... base64 secret") from None
    return value


def refusal(
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address,
    allow: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = (),
) -> str | None:
    """Why the SSRF guard refuses to connect to ``ip`` (None: it may). An IPv4-mapped IPv6
    address is judged as the IPv4 address it carries."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip in _METADATA:
        return f"{ip} is a cloud metadata address"
    if any(ip in net for net in allow):
        return None
    for flag, what in (
        ("is_loopback", "loopback"),
        ("is_link_local", "link-local"),
        ("is_multicast", "multicast"),
        ("is_unspecified", "unspecified"),
        ("is_private", "private"),
        ("is_reserved", "reserved"),
    ):
        if getattr(ip, flag):
            return f"{ip} is a {what} address"
    if not ip.is_global:
        return f"{ip} is not a globally routable address"
    return None


#: seconds a name's answer from the resolver is reused; every use judges it again
RESOLVE_TTL = 5.0
_RESOLVED: dict[str, tuple[float, tuple[str, ...]]] = {}


async def _checked_address(host: str, allow: tuple, now: float | None = None) -> str:
    """The address to connect to: every address ``host`` resolves to must pass the guard
    (a name with one bad answer is refused), and the first is used. A name's answer is
    kept ``RESOLVE_TTL`` seconds (``now``: a ``time.monotonic()`` reading, for tests) to
    save a thread hop to the resolver per delivery; it is judged again at every use, with
    the allow-list of the moment, and the address judged is the one connected to: the
    cache holds answers, never verdicts."""
    if _literal(host):  # an address literal needs no resolver (and no thread hop to one)
        addresses: tuple[str, ...] = (host,)
    else:
        now = time.monotonic() if now is None else now
        cached = _RESOLVED.get(host)
        if cached is not None and cached[0] > now:
            addresses = cached[1]
        else:
            addresses = await _resolve(host)
            if len(_RESOLVED) >= 1024:
                _RESOLVED.clear()
            _RESOLVED[host] = (now + RESOLVE_TTL, addresses)
    for a in addresses:
        why = _verdict(a, allow)
        if why is not None:
            raise Fail(f"push target {host!r} refused by the SSRF guard: {why}{_ALLOW_HINT}")
    return addresses[0]


async def _resolve(host: str) -> tuple[str, ...]:
    """What the system resolver answers for ``host`` (at least one address)."""
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise PushFailed(f"cannot resolve {host!r}: {exc.strerror or exc}") from None
    addresses = tuple(dict.fromkeys(info[4][0] for info in infos))
    if not addresses:
        raise PushFailed(f"{host!r} resolved to no address")
    return addresses


@functools.lru_cache(maxsize=1024)
def _literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


@functools.lru_cache(maxsize=4096)
def _verdict(address: str, allow: tuple) -> str | None:
    """:func:`refusal` of an address as text (a zone index dropped), remembered per
    allow-list: the same few addresses are judged at every delivery."""
    return refusal(ipaddress.ip_address(address.split("%")[0]), allow)


@functools.lru_cache(maxsize=8)
def _tls(ca_bundle: str | None) -> ssl.SSLContext:
    """The TLS context deliveries verify with: certifi's roots (httpx's default), plus
    ``ca_bundle``'s certificates. One bundle that cannot be loaded is a :class:`Fail`."""
    import certifi

    context = ssl.create_default_context(cafile=certifi.where())
    if ca_bundle:
        try:
            context.load_verify_locations(cafile=ca_bundle)
        except (OSError, ssl.SSLError) as exc:
            raise Fail(
                f"OFFLOAD_PUSH_CA_BUNDLE={ca_bundle!r} cannot be loaded as PEM CA "
                f"certificates ({exc}); point it at a readable PEM file where the workers run"
            ) from None
    return context


def _untrusted(exc: BaseException) -> ssl.SSLCertVerificationError | None:
    """The certificate verification failure behind an httpcore error, if that is one."""
    seen: BaseException | None = exc
    for _ in range(8):
        if seen is None:
            return None
        if isinstance(seen, ssl.SSLCertVerificationError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def _retry_after(value: str | None) -> float | None:
    """``Retry-After`` as seconds from now (delta-seconds or an HTTP date); None if absent
    or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return min(float(value), _MAX_RETRY_AFTER)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return min(max(0.0, when.timestamp() - time.time()), _MAX_RETRY_AFTER)


@functools.lru_cache(maxsize=64)
def _signer(secret: str) -> Any:
    from standardwebhooks.webhooks import Webhook

    return Webhook(secret)


@functools.lru_cache(maxsize=1024)
def _split(url: str) -> tuple[str, str, int, bytes, bytes]:
    """``url``'s scheme, host, port, ``Host`` header and request target (what is not
    printable ASCII percent-encoded, as httpx does): the same few URLs every delivery."""
    parts = urlsplit(url)
    scheme, host = parts.scheme, parts.hostname or ""
    port = parts.port or (443 if scheme == "https" else 80)
    netloc = parts.netloc.rpartition("@")[2]
    try:
        authority = netloc.encode("ascii")
    except UnicodeEncodeError:  # an internationalised name goes out in its ASCII form
        name, colon, rest = netloc.rpartition(":") if parts.port else (netloc, "", "")
        authority = name.encode("idna") + (colon + rest).encode()
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return scheme, host, port, authority, quote(target, safe=_PRINTABLE).encode()


_PRINTABLE = "".join(map(chr, range(0x21, 0x7F)))


def _headers(
    request: Mapping[str, Any], info: Any, authority: bytes, secret: str
) -> list[tuple[bytes, bytes]]:
    """The request's headers in the order they are sent (``Host`` first): the task's own,
    less those offload sets itself, then offload's, then the signature over the body."""
    body = request.get("body") or b""
    out = [(b"Host", authority)]
    lower = set()
    for k, v in (request.get("headers") or {}).items():
        low = k.lower()
        if low not in _RESERVED:
            lower.add(low)
            out.append((k.encode(), v.encode()))
    if body or request.get("method", "POST") in ("POST", "PUT", "PATCH"):
        out.append((b"Content-Length", str(len(body)).encode()))
    if body and "content-type" not in lower:
        out.append((b"Content-Type", b"application/octet-stream"))
    if "user-agent" not in lower:
        out.append((b"User-Agent", b"offload-push"))
    if "accept" not in lower:
        out.append((b"Accept", b"*/*"))
    retries = str(max(0, info.attempt - 1)).encode()
    eta = request.get("eta")
    now = datetime.now(UTC)
    # a Cloud Tasks task's own id, without the queue its offload id carries
    name = info.name or info.id.removeprefix(f"{info.queue}/")
    out += [
        (b"X-CloudTasks-QueueName", info.queue.encode()),
        (b"X-CloudTasks-TaskName", name.encode()),
        (b"X-CloudTasks-TaskRetryCount", retries),
        (b"X-CloudTasks-TaskExecutionCount", retries),
        (b"X-CloudTasks-TaskETA", f"{eta if eta is not None else time.time():.6f}".encode()),
        (b"webhook-id", info.id.encode()),
        (b"webhook-timestamp", str(int(now.timestamp())).encode()),
        (b"webhook-signature", _signer(secret).sign(info.id, now, body).encode()),
    ]
    return out


async def deliver(request: dict[str, Any]) -> None:
    """The body of the built-in task function: one delivery attempt of ``request`` (url,
    method, headers, body, deadline seconds, eta) for the task running now. Returns on a
    2xx; raises as the module docstring says otherwise."""
    from .task import current_task

    info = current_task()
    # The worker runs an async handler's first step in its own claim loop's task and the
    # rest in a task of the handler's; httpcore's connections (anyio cancel scopes) must
    # be entered and left in one task, so step into the handler's task before using one.
    await asyncio.sleep(0)
    config = PushConfig.from_env()
    secret = config.secret_for(info.queue)
    if secret is None:
        raise Fail(
            f"queue {info.queue!r} has no push secret: set OFFLOAD_PUSH_SECRET=whsec_... "
            "(or OFFLOAD_PUSH_SECRETS=queue=whsec_...) where the workers run"
        )
    url = request["url"]
    method = request.get("method", "POST")
    deadline = float(request.get("deadline") or 600.0)
    tls = _tls(config.ca_bundle)  # a bundle that cannot be read dead-letters every push
    scheme, host, port, authority, target = _split(url)
    https = scheme == "https"
    import httpcore

    try:
        async with asyncio.timeout(deadline):
            address = await _checked_address(host, config.allow)
            to = (scheme, address, port, host if https else "", config.ca_bundle if https else None)
            status, answer = await push_pool.pool().request(
                to,
                method,
                target,
                _headers(request, info, authority, secret),
                request.get("body") or b"",
                tls if https else None,
                _RESPONSE_READ_LIMIT,
            )
    except TimeoutError:
        raise PushFailed(
            f"{method} {url}: no response within the dispatch deadline ({deadline:g}s)"
        ) from None
    except (httpcore.NetworkError, httpcore.ProtocolError, httpcore.TimeoutException) as exc:
        bad = _untrusted(exc)
        if bad is not None:
            raise PushFailed(
                f"{method} {url}: the TLS certificate of {host!r} is not trusted "
                f"({bad.verify_message or bad}); if it is yours, add the CA that signed it "
                "to OFFLOAD_PUSH_CA_BUNDLE (a PEM file) where the workers run"
            ) from None
        raise PushFailed(f"{method} {url}: {type(exc).__name__}: {exc}") from None
    if 200 <= status < 300:
        return
    if status in (429, 503):
        value = next((v for k, v in answer if k.lower() == b"retry-after"), None)
        after = _retry_after(value.decode("latin-1") if value is not None else None)
        if after is not None:
            raise Retry(
                after=after, reason=f"{method} {url}: HTTP {status}, Retry-After {after:g}s"
            )
    raise PushFailed(f"{method} {url}: HTTP {status}")
