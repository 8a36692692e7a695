"""Tools for testing code built on offload, and brokers built for it.

:func:`check_broker` runs the broker conformance suite (:mod:`offload.testing.conformance`)
against any broker factory; :func:`run_until_idle` runs an app's queues dry with a burst
worker, for testing an application's own tasks on a real (SQLite) broker.
"""

from __future__ import annotations

from .apps import run_until_idle
from .conformance import (
    CHECKS,
    BrokerFactory,
    ConformanceFailure,
    CouldNotCheck,
    check_broker,
    run_check,
)

__all__ = [
    "CHECKS",
    "BrokerFactory",
    "ConformanceFailure",
    "CouldNotCheck",
    "check_broker",
    "run_check",
    "run_until_idle",
]
