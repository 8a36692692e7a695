"""offload's own brokers all declare task inspection, so its checks never pass vacuously."""

from __future__ import annotations

from offload.brokers import broker_from_url
from offload.brokers.base import TaskInspection


def test_every_broker_inspects(broker_url):
    broker = broker_from_url(broker_url)
    assert broker.capabilities.inspect is True
    assert isinstance(broker, TaskInspection)
