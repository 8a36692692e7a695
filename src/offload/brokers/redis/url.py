"""Redis broker URLs: every fault that can be known without I/O is found here, when the
broker is built (``broker_from_url``, hence ``App()``), in one line that names it.

``redis://[user:password@]host[:port][/db][?prefix=name&<redis-py option>=...]``, also
``rediss://`` (TLS) and ``redis+cluster://`` (database 0 only). ``prefix`` namespaces every
key (default ``offload``); the other query parameters are the redis-py connection options
listed in :data:`OPTIONS`, checked by name (a typo gets a suggestion) and by value.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from ...errors import BrokerURLError

__all__ = ["OPTIONS", "RedisURL", "parse_url"]


def _flag(v: str) -> bool:
    if v.lower() in ("", "0", "false", "no", "n", "off"):
        return False
    if v.lower() in ("1", "true", "yes", "y", "on"):
        return True
    raise ValueError(f"{v!r} is not a yes/no value (true, false, 1, 0)")


#: the query parameters a Redis broker URL takes, each with the check of its value (the
#: redis-py connection options that make sense for the broker; ``decode_responses`` or
#: ``protocol``, which change what replies look like, are not among them)
OPTIONS: dict[str, type | object] = {
    "prefix": str,
    "db": int,
    "username": str,
    "password": str,
    "client_name": str,
    "lib_name": str,
    "lib_version": str,
    "socket_timeout": float,
    "socket_connect_timeout": float,
    "socket_keepalive": _flag,
    "socket_read_size": int,
    "health_check_interval": int,
    "max_connections": int,
    "retry_on_timeout": _flag,
    "timeout": float,
    "ssl_ca_certs": str,
    "ssl_ca_path": str,
    "ssl_ca_data": str,
    "ssl_cert_reqs": str,
    "ssl_certfile": str,
    "ssl_keyfile": str,
    "ssl_password": str,
    "ssl_check_hostname": _flag,
    "ssl_ciphers": str,
    "ssl_min_version": int,
    "ssl_include_verify_flags": str,
    "ssl_exclude_verify_flags": str,
}


@dataclass(frozen=True, slots=True)
class RedisURL:
    """A checked broker URL: what redis-py gets, the key prefix, and how to name the server."""

    redis_url: str  # without ``prefix`` and the ``+cluster`` suffix
    prefix: str
    cluster: bool
    where: str  # "host:port", for messages
    db: int


def parse_url(url: str) -> RedisURL:
    """Check ``url`` without I/O; raise :class:`BrokerURLError` naming the first fault."""

    def bad(what: str) -> BrokerURLError:
        return BrokerURLError(f"broker URL {url!r}: {what}")

    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    cluster = scheme.endswith("+cluster")
    base_scheme = scheme.removesuffix("+cluster")
    if base_scheme not in ("redis", "rediss"):
        raise bad("not a redis://, rediss:// or redis+cluster:// URL")
    if not parts.hostname:
        raise bad("no host; write it as redis://HOST:6379/0, e.g. redis://127.0.0.1:6379/0")
    try:
        port = parts.port or 6379
    except ValueError:
        raise bad(
            f"port {parts.netloc.rpartition(':')[2]!r} is not a number from 1 to 65535"
        ) from None
    if port == 0:
        raise bad("port 0 is not a number from 1 to 65535")
    db_text = parts.path.strip("/")
    if db_text and not (db_text.isascii() and db_text.isdigit()):
        raise bad(
            f"database {db_text!r} must be a number from 0 up (the path, e.g. "
            "redis://127.0.0.1:6379/0; leave it out for database 0)"
        )
    db = int(db_text or 0)
    prefix = "offload"
    rest = []
    for k, v in parse_qsl(parts.query, keep_blank_values=True):
        check = OPTIONS.get(k)
        if check is None:
            close = difflib.get_close_matches(k, OPTIONS, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise bad(
                f"unknown query parameter {k!r}; {hint}the parameters are "
                + ", ".join(sorted(OPTIONS))
            )
        try:
            value = check(v)  # type: ignore[operator]
        except ValueError as exc:
            raise bad(f"query parameter {k}={v!r} is not valid ({exc})") from None
        if k == "prefix":
            prefix = v
        elif k == "db":
            if value < 0:
                raise bad(f"database {v!r} must be a number from 0 up")
            db = value
            rest.append((k, v))
        else:
            rest.append((k, v))
    if not prefix or any(c in prefix for c in "{}"):
        raise bad(f"prefix {prefix!r} must be non-empty, without braces")
    if cluster and db != 0:
        raise bad(f"database {db}: Redis Cluster has database 0 only; drop the /{db}")
    clean = urlunsplit((base_scheme, parts.netloc, parts.path, urlencode(rest), ""))
    return RedisURL(clean, prefix, cluster, f"{parts.hostname}:{port}", db)
