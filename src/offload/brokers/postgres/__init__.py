"""The PostgreSQL broker: every statement a named file under ``sql/`` beside this package,
the schema migrated from ``sql/migrations/``; the driver (psycopg 3) is imported only here."""

from .broker import PostgresBroker

__all__ = ["PostgresBroker"]
