"""The PostgreSQL broker's configuration (parsed from its URL) and its SQL text.

Every statement the broker runs is a named file under ``sql/`` (``queries/`` for
the operations, ``migrations/`` for the schema, ``bootstrap.sql`` for the migration
runner), loaded once per schema with the schema name and notify channel filled in. The
async broker, the sync ``enqueue_blocking`` twin and a caller's own connection all run
the same text.
"""

from __future__ import annotations

import difflib
import math
import re
import select
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

from psycopg import pq
from psycopg.conninfo import conninfo_to_dict

from ...errors import BrokerURLError
from ..base import NewTask

__all__ = [
    "LATEST_VERSION",
    "MIGRATIONS",
    "PostgresConfig",
    "Queries",
    "by_copy",
    "copy_rows",
    "created",
    "enqueue_statement",
    "has_input",
    "queries",
]

_SQL = resources.files(__package__).joinpath("sql")
_SCHEMA_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,47}$")

# offload's own URL parameters; everything else is libpq's and passes through untouched
_OWN = {"schema", "prepare_threshold", "listen_url", "pool_min", "pool_max", "pool_timeout"}


def _read(*parts: str) -> str:
    return _SQL.joinpath(*parts).read_text(encoding="utf-8")


def _migrations() -> tuple[tuple[int, str, str], ...]:
    found = []
    for entry in _SQL.joinpath("migrations").iterdir():
        m = re.match(r"^(\d{3})_[a-z0-9_]+\.sql$", entry.name)
        if m:
            found.append((int(m.group(1)), entry.name, entry.read_text(encoding="utf-8")))
    found.sort()
    if [v for v, _, _ in found] != list(range(1, len(found) + 1)):
        raise RuntimeError(f"offload's PostgreSQL migrations are not numbered 1..n: {found}")
    return tuple(found)


#: (version, file name, text with placeholders), in order
MIGRATIONS = _migrations()
LATEST_VERSION = MIGRATIONS[-1][0]


def fill(text: str, schema: str) -> str:
    """Put the quoted schema name and the notify channel literal into ``text``."""
    return text.replace("{schema}", f'"{schema}"').replace("{channel}", f"'{channel(schema)}'")


def channel(schema: str) -> str:
    """The LISTEN/NOTIFY channel of one schema (payload: the queue name)."""
    return f"offload:{schema}"


@dataclass(frozen=True, slots=True)
class Queries:
    """Every statement, ready to run for one schema."""

    schema: str
    bootstrap: str
    migrations: tuple[tuple[int, str], ...]
    version: str
    record_version: str
    enqueue: str
    enqueue_one: str
    enqueue_plain: str
    enqueue_copy: str
    copy_prepare: str
    notify: str
    claim: str
    ack: str
    retry: str
    release: str
    dead_letter: str
    extend: str
    next_due: str
    stats: str
    dead_letters: str
    requeue_dead: str
    set_paused: str
    purge: str
    delete: str
    declare: str
    record: str
    metrics: str
    now: str
    gc_names: str


_NAMED = [
    "enqueue", "enqueue_one", "enqueue_plain", "enqueue_copy", "copy_prepare", "notify",
    "claim", "ack", "retry", "release", "dead_letter", "extend", "next_due",
    "stats", "dead_letters",
    "requeue_dead", "set_paused", "purge", "delete", "declare", "record", "metrics", "now",
    "gc_names",
]  # fmt: skip


@cache
def queries(schema: str) -> Queries:
    """The broker's statements for ``schema`` (validated by :class:`PostgresConfig`)."""
    return Queries(
        schema=schema,
        bootstrap=fill(_read("bootstrap.sql"), schema),
        migrations=tuple((v, fill(text, schema)) for v, _, text in MIGRATIONS),
        version=fill("SELECT coalesce(max(version), 0) FROM {schema}.schema_version", schema),
        record_version=fill("INSERT INTO {schema}.schema_version (version) VALUES (%s)", schema),
        **{name: fill(_read("queries", f"{name}.sql"), schema) for name in _NAMED},
    )


def schema_snapshot(schema: str) -> str:
    """``schema.sql`` for ``schema``: what the migrations must produce (tested)."""
    return fill(_read("schema.sql"), schema)


def has_input(fd: int) -> bool:
    """Whether an idle connection's socket is readable: the server sent a FATAL
    (``pg_terminate_backend``, shutdown) or closed it. No round trip; poll, not select, so
    that descriptors above FD_SETSIZE work."""
    p = select.poll()
    p.register(fd, select.POLLIN | select.POLLERR | select.POLLHUP)
    return bool(p.poll(0))


def _redact(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return urlunsplit(parts._replace(query=""))
    netloc = parts.netloc.rsplit("@", 1)
    userinfo = netloc[0].split(":", 1)[0] + ":***"
    return urlunsplit(parts._replace(netloc=f"{userinfo}@{netloc[1]}", query=""))


def _int(url: str, key: str, value: str, minimum: int) -> int:
    try:
        n = int(value)
    except ValueError:
        n = minimum - 1
    if n < minimum:
        raise BrokerURLError(
            f"broker URL {_redact(url)!r}: {key}={value!r} must be a whole number >= {minimum}"
        )
    return n


@dataclass(frozen=True, slots=True)
class PostgresConfig:
    """A parsed ``postgresql://`` URL: libpq's conninfo plus offload's own parameters."""

    conninfo: str  # the URL minus offload's parameters, handed to psycopg
    listen_conninfo: str  # where the LISTEN connection goes (session mode)
    schema: str = "offload"
    prepare_threshold: int | None = 5  # psycopg's default; None: never prepare
    pool_min: int = 1
    pool_max: int = 10
    pool_timeout: float = 10.0  # seconds to wait for a connection before BrokerUnavailable
    where: str = ""  # the URL without password or query, for messages
    connect_timeout: int = 10  # seconds for open()'s first connection (libpq's, if given)

    @classmethod
    def from_url(cls, url: str) -> PostgresConfig:
        parts = urlsplit(url)
        if parts.scheme.lower() not in ("postgresql", "postgres"):
            raise BrokerURLError(f"broker URL {_redact(url)!r}: expected postgresql://...")
        own: dict[str, str] = {}
        rest: list[tuple[str, str]] = []
        for key, value in parse_qsl(parts.query, keep_blank_values=True):
            (own.__setitem__(key, value) if key in _OWN else rest.append((key, value)))
        conninfo = urlunsplit(parts._replace(query=urlencode(rest, quote_via=quote)))
        libpq = _check_libpq(url, [k for k, _ in rest], conninfo)
        schema = own.get("schema", "offload")
        if not _SCHEMA_NAME.match(schema):
            raise BrokerURLError(
                f"broker URL {_redact(url)!r}: schema={schema!r} must be 1-48 letters, digits "
                "or '_', not starting with a digit"
            )
        pt_raw = own.get("prepare_threshold", "5").lower()
        pt = (
            None
            if pt_raw in ("none", "null", "off", "")
            else _int(url, "prepare_threshold", pt_raw, 0)
        )
        pool_min = _int(url, "pool_min", own.get("pool_min", "1"), 0)
        pool_max = _int(url, "pool_max", own.get("pool_max", "10"), 1)
        if pool_max < max(pool_min, 1):
            raise BrokerURLError(f"broker URL {_redact(url)!r}: pool_max must be >= pool_min")
        try:
            timeout = float(own.get("pool_timeout", "10"))
        except ValueError:
            timeout = -1.0
        if not timeout > 0:
            raise BrokerURLError(
                f"broker URL {_redact(url)!r}: pool_timeout must be a number of seconds > 0"
            )
        listen = own.get("listen_url") or conninfo
        if "connect_timeout" in libpq:
            connect_timeout = _int(url, "connect_timeout", libpq["connect_timeout"], 0)
        else:
            connect_timeout = max(2, math.ceil(timeout))
        return cls(
            conninfo=conninfo,
            listen_conninfo=listen,
            schema=schema,
            prepare_threshold=pt,
            pool_min=pool_min,
            pool_max=pool_max,
            pool_timeout=timeout,
            where=_redact(url),
            connect_timeout=connect_timeout,
        )


@cache
def _libpq_keywords() -> frozenset[str]:
    """The connection parameters this libpq accepts (read from the library, no I/O)."""
    return frozenset(d.keyword.decode() for d in pq.Conninfo.get_defaults())


def _check_libpq(url: str, keys: list[str], conninfo: str) -> dict[str, str]:
    """Refuse, without I/O, a query parameter that neither offload nor libpq knows (a typo
    such as ``?shema=`` would otherwise reach libpq and fail at every connection attempt),
    a malformed URL, and a port that is not a number from 1 to 65535."""
    known = _libpq_keywords()
    for key in keys:
        if key not in known:
            close = difflib.get_close_matches(key, sorted(_OWN | known), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise BrokerURLError(
                f"broker URL {_redact(url)!r}: unknown parameter {key!r}{hint}; offload's own "
                f"are {', '.join(sorted(_OWN))}, the rest must be libpq connection parameters"
            )
    try:
        params = conninfo_to_dict(conninfo)
    except Exception as exc:  # psycopg's ProgrammingError, with libpq's reason
        raise BrokerURLError(f"broker URL {_redact(url)!r}: {exc}") from None
    for port in str(params.get("port", "")).split(","):
        if port and not (port.isdigit() and 1 <= int(port) <= 65535):
            raise BrokerURLError(
                f"broker URL {_redact(url)!r}: port {port!r} must be a number from 1 to 65535"
            )
    return {k: str(v) for k, v in params.items()}


# -- enqueue: which statement, with which parameters (shared by every caller) -----------


def enqueue_statement(
    q: Queries, tasks: Sequence[NewTask]
) -> tuple[str, dict[str, Any] | tuple[Any, ...]]:
    """The statement and parameters for an enqueue, whichever connection runs it."""
    if len(tasks) == 1:  # the common one-by-one send: plain parameters, no arrays
        t = tasks[0]
        if t.name is None:  # no names table to consult: a plain INSERT, positional
            eta = None if t.eta is None else float(t.eta)
            return q.enqueue_plain, (t.id, t.queue, bytes(t.payload), eta, float(t.delay or 0.0))
        return q.enqueue_one, {
            "id": t.id,
            "queue": t.queue,
            "name": t.name,
            "payload": bytes(t.payload),
            "eta": None if t.eta is None else float(t.eta),
            "delay": float(t.delay or 0.0),
        }
    return q.enqueue, {
        "ids": [t.id for t in tasks],
        "queues": [t.queue for t in tasks],
        "names": [t.name for t in tasks],
        "payloads": [bytes(t.payload) for t in tasks],
        "etas": [None if t.eta is None else float(t.eta) for t in tasks],
        "delays": [float(t.delay or 0.0) for t in tasks],
    }


# Batches at least this big, without names, go by COPY (enqueue_copy.sql): measured ~1.5x
# the rows/s of the unnest INSERT at 1,000 tasks. Named tasks need enqueue.sql's dedup.
COPY_MIN = 64


def by_copy(tasks: Sequence[NewTask]) -> bool:
    return len(tasks) >= COPY_MIN and all(t.name is None for t in tasks)


def copy_rows(
    tasks: Sequence[NewTask], now: float, known: Sequence[str]
) -> tuple[list[tuple[Any, ...]], list[str]]:
    """The COPY rows of a batch and the queues to notify: an id that exists already
    (``known``, read by copy_prepare.sql) or repeats within the batch is left out, so the
    COPY, which has no ON CONFLICT, never meets a duplicate key (idempotent by id)."""
    seen = set(known)
    rows = []
    queues = set()
    for t in tasks:
        if t.id in seen:
            continue
        seen.add(t.id)
        visible = float(t.eta) if t.eta is not None else now + float(t.delay or 0.0)
        rows.append((t.id, t.queue, bytes(t.payload), visible, now))
        queues.add(t.queue)
    return rows, sorted(queues)


def created(tasks: Sequence[NewTask], rows: list) -> list[bool]:
    """Per task, whether it exists now: created, or already there (same id)."""
    if len(tasks) == 1:
        # enqueue_plain.sql returns no row only when the id exists: True as well
        return [bool(rows) or tasks[0].name is None]
    done = {r[0] for r in rows}
    return [t.id in done for t in tasks]
