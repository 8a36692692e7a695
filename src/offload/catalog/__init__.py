"""The built-in catalog of machine shapes: vCPUs, memory and an on-demand price per hour.

The data is ``machines.toml`` beside this module, one region per provider, each provider
with the date and the source of its prices. Topologies name these shapes (``machine =
"e2-highmem-2"``) or declare their own; the cost planner chooses among them. Loaded on
first use and kept: a worker that never reads a topology never reads the catalog.
"""

from __future__ import annotations

import functools
import os
import tomllib
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError
from ..service import parse_size

__all__ = ["Machine", "Provider", "load_catalog", "providers"]

_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "machines.toml")


@dataclass(frozen=True, slots=True)
class Provider:
    """Where a provider's prices come from: the region they hold for, when, and whence."""

    name: str
    region: str
    currency: str
    prices_as_of: str
    source: str


@dataclass(frozen=True, slots=True)
class Machine:
    """A machine shape: ``cpu`` vCPUs a pool can count on, ``memory`` bytes, and the
    on-demand ``price_per_hour`` (None: not known; a custom shape may leave it out).
    ``provider`` is ``"gce"`` or ``"aws"`` for built-in shapes, ``"custom"`` for shapes a
    topology file declares."""

    name: str
    cpu: float
    memory: int
    price_per_hour: float | None = None
    provider: str = "custom"

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "provider": self.provider,
            "cpu": self.cpu,
            "memory": self.memory,
            "price_per_hour": self.price_per_hour,
        }


def _read() -> dict[str, Any]:
    with open(_FILE, "rb") as f:
        return tomllib.load(f)


@functools.cache
def providers() -> dict[str, Provider]:
    """The providers of the built-in shapes, with the region, date and source of prices."""
    return {
        name: Provider(name, p["region"], p["currency"], p["prices_as_of"], p["source"])
        for name, p in _read()["providers"].items()
    }


@functools.cache
def load_catalog() -> dict[str, Machine]:
    """Every built-in shape by name, in the file's order (GCE, then AWS).

    Raises ConfigError if the shipped data is damaged (a packaging fault, named exactly).
    """
    data = _read()
    known = set(data["providers"])
    out: dict[str, Machine] = {}
    for name, m in data["machines"].items():
        where = f"offload catalog: machines.{name}"
        price = m.get("price_per_hour")
        if m.get("provider") not in known or not isinstance(price, (int, float)) or price <= 0:
            raise ConfigError(f"{where}: needs a known provider and a price above 0")
        out[name] = Machine(
            name=name,
            cpu=float(m["cpu"]),
            memory=parse_size(m["memory"], f"{where}.memory"),
            price_per_hour=float(price),
            provider=m["provider"],
        )
    return out
