"""offload: grow a Python monolith into services joined by durable task queues.

The public names are imported on first use (PEP 562), so importing a part that needs none
of them (``import offload.chan``, ``import offload.errors``) does not load the app, the
brokers, the worker or msgspec; ``from offload import App`` works as it always has.

To export a new name: add it to ``_EXPORTS`` (name -> defining module), to ``__all__`` and
to the ``TYPE_CHECKING`` imports; ``tests/unit/test_api.py`` checks the three agree.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# The one table of public names: name -> the module that defines it.
_EXPORTS: dict[str, str] = {
    "App": "offload.app",
    "DeadLetterInfo": "offload.app",
    "QueueStats": "offload.brokers.base",
    "TaskMetrics": "offload.brokers.base",
    "QueuePolicy": "offload.core.policy",
    "RetryPolicy": "offload.core.policy",
    "BadArguments": "offload.errors",
    "BrokerError": "offload.errors",
    "BrokerFull": "offload.errors",
    "BrokerRefused": "offload.errors",
    "BrokerUnavailable": "offload.errors",
    "ConfigError": "offload.errors",
    "Fail": "offload.errors",
    "MemoryLimitExceeded": "offload.errors",
    "ProcessDied": "offload.errors",
    "OffloadError": "offload.errors",
    "PayloadError": "offload.errors",
    "PolicyError": "offload.errors",
    "RemoteError": "offload.errors",
    "DeadlineExceeded": "offload.chan.errors",
    "Retry": "offload.errors",
    "TaskAlreadyExists": "offload.errors",
    "TaskTimeout": "offload.errors",
    "UnknownQueue": "offload.errors",
    "UnknownTask": "offload.errors",
    "Unsupported": "offload.errors",
    "Hooks": "offload.hooks",
    "Service": "offload.service",
    "TaskFunction": "offload.task",
    "TaskHandle": "offload.task",
    "TaskInfo": "offload.task",
    "current_task": "offload.task",
    "TopologyError": "offload.topology",
    "Worker": "offload.worker",
    "WorkerStats": "offload.worker",
}

__all__ = [
    "App",
    "BadArguments",
    "BrokerError",
    "BrokerFull",
    "BrokerRefused",
    "BrokerUnavailable",
    "ConfigError",
    "DeadLetterInfo",
    "DeadlineExceeded",
    "Fail",
    "Hooks",
    "MemoryLimitExceeded",
    "OffloadError",
    "PayloadError",
    "PolicyError",
    "ProcessDied",
    "QueuePolicy",
    "QueueStats",
    "RemoteError",
    "Retry",
    "RetryPolicy",
    "Service",
    "TaskAlreadyExists",
    "TaskFunction",
    "TaskHandle",
    "TaskInfo",
    "TaskMetrics",
    "TaskTimeout",
    "TopologyError",
    "UnknownQueue",
    "UnknownTask",
    "Unsupported",
    "Worker",
    "WorkerStats",
    "__version__",
    "current_task",
]

if TYPE_CHECKING:  # what type checkers and IDEs see; at run time __getattr__ serves these
    from .app import App, DeadLetterInfo
    from .brokers.base import QueueStats, TaskMetrics
    from .chan.errors import DeadlineExceeded
    from .core.policy import QueuePolicy, RetryPolicy
    from .errors import (
        BadArguments,
        BrokerError,
        BrokerFull,
        BrokerRefused,
        BrokerUnavailable,
        ConfigError,
        Fail,
        MemoryLimitExceeded,
        OffloadError,
        PayloadError,
        PolicyError,
        ProcessDied,
        RemoteError,
        Retry,
        TaskAlreadyExists,
        TaskTimeout,
        UnknownQueue,
        UnknownTask,
        Unsupported,
    )
    from .hooks import Hooks
    from .service import Service
    from .task import TaskFunction, TaskHandle, TaskInfo, current_task
    from .topology import TopologyError
    from .worker import Worker, WorkerStats


def __getattr__(name: str) -> Any:
    """Import a public name's module on first access and keep the name (PEP 562)."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'offload' has no attribute {name!r}")
    from importlib import import_module

    value = getattr(import_module(module), name)
    globals()[name] = value  # later look-ups find it directly, without this function
    return value


def __dir__() -> list[str]:
    """Every public name, imported yet or not, for ``dir()`` and completion."""
    return sorted(set(globals()) | set(__all__))
