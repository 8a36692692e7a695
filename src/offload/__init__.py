"""offload: grow a Python monolith into services joined by durable task queues."""

from .app import App, DeadLetterInfo
from .brokers.base import QueueStats, TaskMetrics
from .core.policy import QueuePolicy, RetryPolicy
from .errors import (
    BadArguments,
    BrokerError,
    BrokerUnavailable,
    ConfigError,
    Fail,
    OffloadError,
    PayloadError,
    PolicyError,
    Retry,
    TaskAlreadyExists,
    UnknownQueue,
    UnknownTask,
    Unsupported,
)
from .hooks import Hooks
from .task import TaskFunction, TaskHandle, TaskInfo, current_task
from .worker import Worker, WorkerStats

__version__ = "0.1.0"

__all__ = [
    "App",
    "BadArguments",
    "BrokerError",
    "BrokerUnavailable",
    "ConfigError",
    "DeadLetterInfo",
    "Fail",
    "Hooks",
    "OffloadError",
    "PayloadError",
    "PolicyError",
    "QueuePolicy",
    "QueueStats",
    "Retry",
    "RetryPolicy",
    "TaskAlreadyExists",
    "TaskFunction",
    "TaskHandle",
    "TaskInfo",
    "TaskMetrics",
    "UnknownQueue",
    "UnknownTask",
    "Unsupported",
    "Worker",
    "WorkerStats",
    "__version__",
    "current_task",
]
