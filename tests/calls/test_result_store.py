"""Every broker this project ships stores results (the capability calls need), and says so."""

from __future__ import annotations

from offload.brokers import broker_from_url
from offload.brokers.base import ResultStore


def test_every_shipped_broker_stores_results(broker_url):
    broker = broker_from_url(broker_url)
    assert broker.capabilities.results, f"{type(broker).__name__} must declare results=True"
    assert isinstance(broker, ResultStore)
