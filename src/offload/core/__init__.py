"""Pure core, no I/O: the task envelope, queue policies and retry math."""

from .policy import QueuePolicy, RetryPolicy, parse_rate

__all__ = ["QueuePolicy", "RetryPolicy", "parse_rate"]
