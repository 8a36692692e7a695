"""The Redis broker (also Redis Cluster and TLS): every state change one Lua script from
``lua/`` beside this package; the driver (redis-py) is imported only here."""

from .broker import RedisBroker

__all__ = ["RedisBroker"]
