"""The embedded SQLite broker: one file, one machine, nothing to install (the default).

Its SQL lives in ``sql/`` beside this package; :mod:`.broker` is the entry point."""

from .broker import SQLiteBroker

__all__ = ["SQLiteBroker"]
