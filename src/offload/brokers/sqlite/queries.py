"""The SQLite broker's SQL, read once from ``sql/sqlite/*.sql``, and its schema migrations.

``queries.sql`` holds every statement under a ``-- name: <name>`` line; ``schema.sql`` is
schema version 1 and each ``migrate_<n>.sql`` takes version ``n - 1`` to ``n`` (2: the
``tasks.expired`` and ``queues.declared_at`` columns; 3: the ``results`` table; 4: the
``queues.retry`` column, a queue's retry override). A new
version adds its file and bumps :data:`SCHEMA_VERSION`; :func:`migrate` applies the missing
steps in one transaction.
"""

from __future__ import annotations

import functools
import pkgutil
import re
import sqlite3

__all__ = ["SCHEMA_VERSION", "Queries", "migrate", "queries"]

#: the ``PRAGMA user_version`` this code writes and understands
SCHEMA_VERSION = 4

_NAME = re.compile(r"^-- name: ([a-z_][a-z0-9_]*)\s*$", re.MULTILINE)


def _read(filename: str) -> str:
    # pkgutil.get_data asks the package's own loader (works from a wheel, a zip or a
    # checkout) without importlib.resources, whose readers pull in pathlib, tempfile and
    # zipfile: over 1 MB of resident memory in every worker on this broker.
    data = pkgutil.get_data(__package__, f"sql/{filename}")
    if data is None:  # a loader that cannot read data files: not a supported install
        raise FileNotFoundError(f"{__package__}: cannot read sql/{filename}")
    return data.decode("utf-8")


class Queries:
    """Named statements as attributes (``Q.claim``), constant strings for the cache."""

    def __init__(self, text: str) -> None:
        parts = _NAME.split(text)
        # parts: [preamble, name1, body1, name2, body2, ...]
        self.names: list[str] = []
        for name, body in zip(parts[1::2], parts[2::2], strict=True):
            sql = body.strip().rstrip(";").strip()
            if not sql or name in self.names:
                raise ValueError(f"queries.sql: query {name!r} is empty or defined twice")
            setattr(self, name, sql)
            self.names.append(name)

    def __getattr__(self, name: str) -> str:  # only for names that do not exist
        raise AttributeError(f"queries.sql has no query named {name!r}")


@functools.cache
def queries() -> Queries:
    """The named queries, parsed on first use (no I/O at import)."""
    return Queries(_read("queries.sql"))


def _step_sql(version: int) -> str:
    return _read("schema.sql" if version == 1 else f"migrate_{version}.sql")


def migrate(conn: sqlite3.Connection) -> int:
    """Bring the schema to :data:`SCHEMA_VERSION` inside one write transaction.

    Returns the version found before migrating (0: new database). Raises ``RuntimeError``
    when the database was written by a newer offload (the caller turns it into a clear
    broker error). Cheap when nothing is to do: one pragma read outside a transaction.
    """
    (found,) = conn.execute("PRAGMA user_version").fetchone()
    if found == SCHEMA_VERSION:
        return found
    if found > SCHEMA_VERSION:
        raise RuntimeError(
            f"schema version {found} is newer than this offload understands "
            f"({SCHEMA_VERSION}); upgrade offload"
        )
    conn.execute("BEGIN IMMEDIATE")
    try:
        # another process may have migrated while we waited for the write lock
        (found,) = conn.execute("PRAGMA user_version").fetchone()
        for version in range(found + 1, SCHEMA_VERSION + 1):
            for statement in _split(_step_sql(version)):
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {int(version)}")
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return found


def _split(script: str) -> list[str]:
    """Split a schema script into statements (executescript would commit on its own)."""
    statements, current = [], []
    for line in script.splitlines():
        if line.lstrip().startswith("--") and not current:
            continue
        current.append(line)
        candidate = "\n".join(current)
        if candidate.rstrip().endswith(";") and sqlite3.complete_statement(candidate):
            statements.append(candidate.strip())
            current = []
    if "\n".join(current).strip():
        raise ValueError("schema script ends with an incomplete statement")
    return statements
