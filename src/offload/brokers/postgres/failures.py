"""What a psycopg error means for offload: an outage, a full server, a refused request, or
a broker URL that names something the server does not have.

The seam where a driver error becomes offload's, so a worker can tell what to wait out
(:class:`~offload.errors.BrokerUnavailable`, :class:`~offload.errors.BrokerFull`) from
what to report once and move past (:class:`~offload.errors.BrokerRefused`) and from a
configuration that no retry will fix (:class:`~offload.errors.BrokerURLError`):

* SQLSTATE class 53 (insufficient resources: ``53100`` disk full, ``53200`` out of memory,
  ``53300`` too many connections, ``53400`` a configured limit such as
  ``temp_file_limit``) -> ``BrokerFull``;
* class 22 (data exceptions, e.g. ``22P05``/``22021`` a NUL or an invalid character in
  text), class 23 (integrity) and class 54 (program limits, e.g. a value too big for an
  index), and the same faults found by psycopg before sending (a NUL in a ``str``, a
  lone surrogate that cannot be UTF-8) -> ``BrokerRefused``;
* anything that says the connection is gone or could not be made -> ``BrokerUnavailable``;
* at connect time, a database or role that does not exist, or a wrong password ->
  ``BrokerURLError`` (libpq reports these without a SQLSTATE: they are read from the
  FATAL message, whose wording is fixed in every supported server version).

Every statement the broker runs is one statement or one transaction, so whichever class an
error falls in, nothing was half done.
"""

from __future__ import annotations

import re

import psycopg
from psycopg_pool import PoolClosed, PoolTimeout

from ...errors import (
    BrokerError,
    BrokerFull,
    BrokerRefused,
    BrokerUnavailable,
    BrokerURLError,
    OffloadError,
)

__all__ = ["connect_error", "translate"]

_OUTAGE = (
    psycopg.OperationalError,
    psycopg.InterfaceError,
    PoolTimeout,
    PoolClosed,
    OSError,
    TimeoutError,
)
# classes of SQLSTATE for which the same request fails the same way every time
_REFUSED_CLASSES = ("22", "23", "54")

_NO_DATABASE = re.compile(r'database "([^"]*)" does not exist')
_NO_ROLE = re.compile(r'role "([^"]*)" does not exist')
_BAD_PASSWORD = re.compile(r'password authentication failed for user "([^"]*)"')
_NO_SLOTS = re.compile(r"too many connections|remaining connection slots are reserved")


def _detail(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def translate(exc: BaseException, what: str, where: str) -> BaseException:
    """The offload error for ``exc``, raised while doing ``what`` on the broker ``where``
    (a description of the server and schema); ``exc`` itself when it is not the driver's."""
    if isinstance(exc, OffloadError):  # already offload's (BrokerUnavailable is an OSError)
        return exc
    prefix = f"PostgreSQL broker at {where}: {what} failed"
    state = getattr(exc, "sqlstate", None) or ""
    if state.startswith("53") or (
        isinstance(exc, psycopg.OperationalError) and _NO_SLOTS.search(str(exc))
    ):
        return BrokerFull(
            f"{prefix}: the server is out of resources ({_detail(exc)}"
            f"{f', SQLSTATE {state}' if state else ''}). Free disk or memory on the server, "
            "or raise the limit it names; nothing was done, retry later"
        )
    if state[:2] in _REFUSED_CLASSES or isinstance(
        exc, (psycopg.DataError, psycopg.IntegrityError, UnicodeError)
    ):
        fix = (
            "change the data (text may not contain NUL characters or unpaired surrogates)"
            if state.startswith("22") or isinstance(exc, (psycopg.DataError, UnicodeError))
            else "change the request"
        )
        return BrokerRefused(
            f"{prefix}: the server refused the request ({_detail(exc)}"
            f"{f', SQLSTATE {state}' if state else ''}). Nothing was done, and the same "
            f"request fails again: {fix}"
        )
    if isinstance(exc, _OUTAGE):
        return BrokerUnavailable(
            f"{prefix}: {_detail(exc)}. Check that the server is running and reachable and "
            "that the URL is right; nothing was done, retry later"
        )
    if isinstance(exc, psycopg.Error):
        return BrokerError(f"{prefix}: {_detail(exc)}")
    return exc


def connect_error(exc: BaseException, url: str, where: str) -> BaseException:
    """As :func:`translate` for a failed connection attempt to ``url`` (redacted), and a
    :class:`BrokerURLError` with the fix when the server says the URL names a database or
    role it lacks, or the password is wrong: no retry can fix those, so a worker must not
    wait for them."""
    text = str(exc)
    if isinstance(exc, psycopg.OperationalError):
        if m := _NO_DATABASE.search(text):
            return BrokerURLError(
                f"broker URL {url!r}: database {m.group(1)!r} does not exist on the server; "
                f'create it (CREATE DATABASE "{m.group(1)}") or fix the database in the URL'
            )
        if m := _NO_ROLE.search(text):
            return BrokerURLError(
                f"broker URL {url!r}: role {m.group(1)!r} does not exist on the server; "
                f'create it (CREATE ROLE "{m.group(1)}" LOGIN) or fix the user in the URL'
            )
        if m := _BAD_PASSWORD.search(text):
            return BrokerURLError(
                f"broker URL {url!r}: the server refused the password of user "
                f"{m.group(1)!r}; fix the password in the URL (or in PGPASSWORD / .pgpass)"
            )
    return translate(exc, "connecting", where)
